"""Many jobs at once: ``status`` (filters, a REASON for waiting jobs, ``--watch``) and ``wait``."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from trainyard_client import cli
from trainyard_client.cli.base import EXIT_INVALID, EXIT_JOB_FAILED, EXIT_OK, api_errors, fail, settings
from trainyard_client.cli.formatting import job_page
from trainyard_client.cli.output import Column, Output, OutputOption, emit, on_terminal

if TYPE_CHECKING:
    from trainyard_client.cli.base import Settings
    from trainyard_client.sdk import TrainyardClient

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


def reason_text(reason: dict[str, Any], now: datetime | None = None) -> str:
    """One short line from a ``WaitReason`` record: what it waits for (a backoff says when it retries)."""
    kind, start = reason.get("kind", "other"), reason.get("estimated_start")
    if kind == "backoff" and start:
        left = (datetime.fromisoformat(start) - (now or datetime.now(UTC))).total_seconds()
        return f"backoff: next try in {max(0, round(left))}s"
    return f"{kind}: {reason.get('message', '')}"


def waiting_reasons(conf: Settings, jobs: list[dict[str, Any]]) -> dict[str, str]:
    """The scheduler's last word (``why``) on each waiting job of the listing, capped."""
    from trainyard_client.connection import TrainyardError, get_json

    reasons: dict[str, str] = {}
    token = conf.bearer()
    for job in [j for j in jobs if j["state"] in WAITING_STATES][:MAX_REASONS]:
        try:
            answer = get_json(conf.url, f"/v1/jobs/{job['job_id']}/why", token, [])
        except TrainyardError:  # no leader (each ask would wait out its timeout): no reasons this time
            break
        if answer.get("reason") and answer.get("pending"):
            reasons[job["job_id"]] = reason_text(answer["reason"])
    return reasons


def list_jobs(conf: Settings, filters: dict[str, Any], labels: dict[str, str]) -> list[dict[str, Any]]:
    """``GET /v1/jobs`` as the API's rows, over the stdlib alone (the listing's start-up budget)."""
    from trainyard_client.connection import get_json

    params = [(k, str(v)) for k, v in filters.items() if v is not None]
    params += [("label", f"{k}={v}") for k, v in labels.items()]
    rows: list[dict[str, Any]] = get_json(conf.url, "/v1/jobs", conf.bearer(), params).get("jobs", [])
    return rows


def status(
    ctx: typer.Context,
    job_id: Annotated[str | None, typer.Argument(metavar="[JOB]", help="one job's details")] = None,
    state: Annotated[str | None, typer.Option("--state", help="only jobs in this state")] = None,
    queue: Annotated[str | None, typer.Option("--queue", help="only jobs of this queue")] = None,
    name: Annotated[str | None, typer.Option("--name", help="only jobs of this name")] = None,
    selector: SelectorOption = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="at most this many")] = 50,
    oldest: Annotated[bool, typer.Option("--oldest", help="the oldest first (by submission time)")] = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="refresh every 2 s until Ctrl-C")] = False,
    output: OutputOption = Output.TABLE,
) -> None:
    """The list of jobs, newest first (--oldest: oldest first; REASON: why a waiting job waits), or
    one job's record."""
    check_state(state)
    labels = parse_selectors(selector)
    conf = settings(ctx)
    if job_id:
        from trainyard_client.cli.render import print_record

        with api_errors(conf.url), conf.client() as client:
            print_record(client.get(job_id), output, page=job_page(conf.url, job_id))
        return
    filters = {
        "state": state,
        "queue": queue,
        "name": name,
        "limit": limit,
        "order": "oldest" if oldest else None,
    }
    empty = "no jobs" + (" matching" if state or queue or name or labels else " yet")
    with api_errors(conf.url):
        while True:
            jobs = list_jobs(conf, filters, labels)
            tabular = output in (Output.TABLE, Output.WIDE)
            reasons = waiting_reasons(conf, jobs) if tabular else {}
            if watch and on_terminal():
                cli.out.clear()
            print_job_rows(jobs, output, empty, reasons)
            if not watch:
                return
            try:
                time.sleep(WATCH_SECONDS)
            except KeyboardInterrupt:
                raise typer.Exit(EXIT_OK) from None
            if not on_terminal():
                cli.out.print("")


def _model_text(job: dict[str, Any]) -> str:
    model = job.get("model")
    return f"{model['name']} v{model['version']}" if model else ""


def _age_of(job: dict[str, Any], now: datetime) -> str:
    from trainyard_client.cli.formatting import age

    return age(datetime.fromisoformat(job["submitted_at"]), now)


def _exit_text(job: dict[str, Any]) -> str:
    return "-" if job.get("exit_code") is None else str(job["exit_code"])


def _reason_of(job: dict[str, Any], reasons: dict[str, str]) -> str:
    """Why it waits (the scheduler's word), or why it ended when it did not succeed."""
    if job["job_id"] in reasons:
        return reasons[job["job_id"]]
    return "" if job["state"] == "succeeded" else job.get("reason") or ""


def _labels_text(job: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in (job.get("labels") or {}).items())


def job_columns(reasons: dict[str, str], now: datetime) -> list[Column]:
    from trainyard_client.cli.base import styled

    return [
        Column("job", lambda j: j["job_id"]),
        Column("name", lambda j: j["name"], wrap=True),
        Column("queue", lambda j: j["queue"]),
        Column("state", lambda j: j["state"], style=styled),
        Column("attempt", lambda j: str(j.get("attempt", 1))),
        Column("age", lambda j: _age_of(j, now)),
        Column("exit", _exit_text),
        Column("model", _model_text, wrap=True),
        Column("reason", lambda j: _reason_of(j, reasons), wrap=True),
        Column("executor", lambda j: j.get("executor_id") or "-", wide_only=True),
        Column(
            "labels",
            lambda j: ",".join(f"{k}={v}" for k, v in (j.get("labels") or {}).items()),
            wide_only=True,
        ),
    ]


def print_job_rows(
    jobs: list[dict[str, Any]], fmt: Output, empty: str, reasons: dict[str, str] | None = None
) -> None:
    """The API's rows; ``reasons``: the scheduler's word on waiting jobs (else a finished job's own)."""
    columns = job_columns(reasons or {}, datetime.now(UTC))
    emit(jobs, columns, fmt, name=lambda j: j["job_id"], empty=empty)


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
