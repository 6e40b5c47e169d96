"""Following a job to its end: its state lines, its logs attempt by attempt, then its model."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from trainyard_client import cli
from trainyard_client.cli.base import EXIT_JOB_FAILED, EXIT_OK, styled
from trainyard_client.cli.formatting import clock, short
from trainyard_client.sdk import LogEvent, TrainyardClient, TrainyardUnavailable
from trainyard_contracts import JobRecord, JobState

if TYPE_CHECKING:
    from trainyard_contracts import ModelRef


def state_lines(record: JobRecord, shown: set[tuple[str, str]]) -> list[str]:
    lines = []
    for state, when in sorted(record.state_times.items(), key=lambda item: item[1]):
        key = (state, when.isoformat())
        if key in shown:
            continue
        shown.add(key)
        extra = ""
        if state == JobState.SCHEDULED and record.executor_id:
            extra = f" on {escape(record.executor_id)}"
        if state in (JobState.SCHEDULED, JobState.RUNNING, JobState.REQUEUED) and record.attempt > 1:
            extra += f" (attempt {record.attempt})"
        if state == JobState.REQUEUED and record.not_before is not None:
            left = (record.not_before - datetime.now(UTC)).total_seconds()
            extra += f", next try in {max(0, round(left))}s"
        lines.append(f"[dim]{clock(when)}[/]  {styled(state)}{extra}")
    return lines


def print_log(event: LogEvent, attempt: int | None) -> int | None:
    if event.attempt is not None and event.attempt != attempt:
        if attempt is not None or event.attempt > 1:
            cli.out.rule(f"attempt {event.attempt}", style="dim")
        attempt = event.attempt
    if event.stream == "system":
        cli.out.print(f"[dim italic]{escape(event.text)}[/]", soft_wrap=True)
    else:
        cli.out.print(event.text, markup=False, highlight=False, soft_wrap=True)
    return attempt


def follow(client: TrainyardClient, job_id: str, wants_model: str | None) -> int:
    """Print a job's life until it ends (and its model is registered); the CLI's exit code."""
    shown: set[tuple[str, str]] = set()

    def show(rec: JobRecord) -> None:
        for line in state_lines(rec, shown):
            cli.out.print(line)

    record = _until_running(client, job_id, show)
    if record.attempts:  # it ran (or tried to): its output, live until it ends
        _stream_logs(client, job_id, show)
    with cli.out.status(f"{job_id}: waiting for the end", spinner="dots"):
        record = client.wait(job_id, poll=cli.POLL_SECONDS, on_change=show)
    show(record)
    summary = f"job {job_id} {styled(record.state)}"
    said = ""
    if record.exit_code is not None:
        said = f"exit code {record.exit_code}"
        summary += f", {said}"
    if record.reason and record.state != JobState.SUCCEEDED and record.reason != said:
        summary += f": {escape(record.reason)}"  # once: a reason that only repeats the code is left out
    cli.out.print(summary)
    if record.state != JobState.SUCCEEDED:
        return EXIT_JOB_FAILED
    if wants_model:
        _wait_for_model(client, record, wants_model)
    return EXIT_OK


def follow_quietly(client: TrainyardClient, job_id: str, wants_model: str | None) -> int:
    """The same end and exit code as :func:`follow`, printing nothing (``-q --wait``)."""
    record = client.wait(job_id, poll=cli.POLL_SECONDS)
    if record.state != JobState.SUCCEEDED:
        return EXIT_JOB_FAILED
    if wants_model and record.model is None:
        client.wait_for_model(job_id, cli.MODEL_WAIT_SECONDS, cli.POLL_SECONDS)
    return EXIT_OK


def _until_running(client: TrainyardClient, job_id: str, show: Callable[[JobRecord], None]) -> JobRecord:
    record = client.get(job_id)
    show(record)
    with cli.out.status(f"{job_id}: {record.state.value}", spinner="dots") as status:
        while record.state != JobState.RUNNING and not record.state.terminal:
            time.sleep(cli.POLL_SECONDS)
            record = client.get(job_id)
            show(record)
            status.update(f"{job_id}: {record.state.value}")
    return record


def _stream_logs(client: TrainyardClient, job_id: str, show: Callable[[JobRecord], None]) -> None:
    """Every attempt's lines in order; between two attempts, the states that led to the next
    (requeued, next try in Ns; scheduled; running), so a retry is never silent or out of order."""
    cli.out.rule("logs", style="dim")
    attempt = None
    try:
        for event in client.follow_logs(job_id):
            if event.event == "log":
                if attempt is not None and event.attempt not in (None, attempt):
                    show(client.get(job_id))
                attempt = print_log(event, attempt)
                if event.stream == "system" and " ended: " in event.text:
                    show(client.get(job_id))  # an attempt ended: its state now (requeued, next try in Ns)
            elif event.event == "end":
                break
    except TrainyardUnavailable as exc:
        cli.err.print(f"[yellow]the log stream broke ({escape(exc.detail)}); waiting for the job[/]")
    cli.out.rule(style="dim")


def _wait_for_model(client: TrainyardClient, record: JobRecord, wants_model: str) -> None:
    with cli.out.status(f"waiting for model {wants_model} to be registered", spinner="dots"):
        model = record.model or client.wait_for_model(record.job_id, cli.MODEL_WAIT_SECONDS, cli.POLL_SECONDS)
    if model is None:
        cli.err.print(
            f"[yellow]model {escape(wants_model)} not registered within {cli.MODEL_WAIT_SECONDS:.0f}s;"
            f" see `trainyard models {escape(wants_model)}` later[/]"
        )
    else:
        print_model(model)


def print_model(model: ModelRef) -> None:
    cli.out.print(
        f"model [bold]{escape(model.name)}[/] version [bold]{model.version}[/]"
        f"  commit {short(model.git_commit)}  run {model.run_id or '-'}",
        soft_wrap=True,
    )
    if model.metrics:
        table = Table("metric", "value", title_justify="left")
        for key, value in sorted(model.metrics.items()):
            table.add_row(escape(key), f"{value:.6g}")
        cli.out.print(table)
