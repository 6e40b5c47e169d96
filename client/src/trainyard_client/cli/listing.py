"""Many jobs at once: ``status`` (filters, a REASON for waiting jobs, ``--watch``) and ``wait``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from trainyard_client import cli
from trainyard_client.cli.base import EXIT_INVALID, EXIT_JOB_FAILED, EXIT_OK, api_errors, fail, settings
from trainyard_client.cli.output import Output, OutputOption

if TYPE_CHECKING:
    from trainyard_client.sdk import JobSummary, TrainyardClient
    from trainyard_contracts import WaitReason

WAITING_STATES = ("submitted", "queued", "requeued")
MAX_REASONS = 20  # `why` asked of at most this many waiting jobs per listing
WATCH_SECONDS = 2.0

SelectorOption = Annotated[
    list[str] | None,
    typer.Option("--selector", "-l", help="only jobs with these labels: key=value (repeat, or a,b)"),
]


def parse_selectors(selectors: list[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for part in (p for s in selectors or [] for p in s.split(",") if p.strip()):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            fail(f"[bold red]-l {part}[/]: a label selector is key=value (e.g. -l sweep=lr)", EXIT_INVALID)
        labels[key.strip()] = value.strip()
    return labels


def check_state(state: str | None) -> None:
    if state is None:
        return
    from trainyard_contracts import JobState

    if state not in {s.value for s in JobState}:
        fail(f"--state must be one of {', '.join(s.value for s in JobState)}", EXIT_INVALID)


def reason_text(reason: WaitReason, now: float | None = None) -> str:
    """One short line: what it waits for (a backoff says when it tries again)."""
    if reason.kind == "backoff" and reason.estimated_start is not None:
        left = reason.estimated_start.timestamp() - (time.time() if now is None else now)
        return f"backoff: next try in {max(0, round(left))}s"
    return f"{reason.kind}: {reason.message}"


def waiting_reasons(client: TrainyardClient, jobs: list[JobSummary]) -> dict[str, str]:
    """The scheduler's last word (``why``) on each waiting job of the listing, capped."""
    from trainyard_client.sdk import TrainyardError

    reasons: dict[str, str] = {}
    for job in [j for j in jobs if j.state.value in WAITING_STATES][:MAX_REASONS]:
        try:
            answer = client.why(job.job_id)
        except TrainyardError:  # no leader (each ask would wait out its timeout): no reasons this time
            break
        if answer.reason is not None and answer.pending:
            reasons[job.job_id] = reason_text(answer.reason)
    return reasons


def status(
    ctx: typer.Context,
    job_id: Annotated[str | None, typer.Argument(metavar="[JOB]", help="one job's details")] = None,
    state: Annotated[str | None, typer.Option("--state", help="only jobs in this state")] = None,
    queue: Annotated[str | None, typer.Option("--queue", help="only jobs of this queue")] = None,
    name: Annotated[str | None, typer.Option("--name", help="only jobs of this name")] = None,
    selector: SelectorOption = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="at most this many")] = 50,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="refresh every 2 s until Ctrl-C")] = False,
    output: OutputOption = Output.TABLE,
) -> None:
    """The list of jobs, newest first (REASON: why a waiting job waits), or one job's record."""
    check_state(state)
    labels = parse_selectors(selector)
    from trainyard_client.cli import render

    conf = settings(ctx)
    filtered = bool(state or queue or name or labels)
    with api_errors(conf.url), conf.client() as client:
        if job_id:
            render.print_record(client.get(job_id), output)
            return
        while True:
            jobs = client.list(state=state, queue=queue, limit=limit, name=name, labels=labels)
            reasons = (
                {} if output in (Output.JSON, Output.YAML, Output.NAME) else waiting_reasons(client, jobs)
            )
            if watch and cli.out.is_terminal:
                cli.out.clear()
            render.print_jobs(jobs, output, "no jobs" + (" matching" if filtered else " yet"), reasons)
            if not watch:
                return
            try:
                time.sleep(WATCH_SECONDS)
            except KeyboardInterrupt:
                raise typer.Exit(EXIT_OK) from None
            if not cli.out.is_terminal:
                cli.out.print("")


def wait(
    ctx: typer.Context,
    job_ids: Annotated[list[str] | None, typer.Argument(metavar="[JOB]...", help="jobs to wait for")] = None,
    selector: SelectorOption = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0, help="give up after seconds")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print nothing; only the exit code")] = False,
) -> None:
    """Wait until every job named (or every job with the labels) has ended; exit 0 only if all
    succeeded, 1 if any did not."""
    labels = parse_selectors(selector)
    if not job_ids and not labels:
        raise typer.BadParameter("name jobs or give -l key=value", param_hint="JOB/-l")
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        ids = list(job_ids or [])
        if labels:
            ids += [j.job_id for j in client.list(labels=labels, limit=10_000) if j.job_id not in ids]
        if not ids:
            fail(f"no jobs with labels {labels}", EXIT_INVALID)
        failed = _wait_all(client, ids, timeout, quiet)
    raise typer.Exit(EXIT_JOB_FAILED if failed else EXIT_OK)


def _wait_all(client: TrainyardClient, ids: list[str], timeout: float | None, quiet: bool) -> int:
    """Poll until each job ends, saying so as each does; how many did not succeed."""
    from trainyard_client.cli.base import styled

    deadline = None if timeout is None else time.monotonic() + timeout
    pending, failed = list(ids), 0
    while pending:
        for job_id in list(pending):
            record = client.get(job_id)
            if not record.state.terminal:
                continue
            pending.remove(job_id)
            failed += record.state.value != "succeeded"
            if not quiet:
                cli.out.print(f"{job_id} {styled(record.state)}  ({len(ids) - len(pending)}/{len(ids)})")
        if pending and deadline is not None and time.monotonic() >= deadline:
            fail(f"[bold red]timed out[/] with {len(pending)} job(s) still going: {' '.join(pending)}", 1)
        if pending:
            time.sleep(cli.POLL_SECONDS)
    return failed
