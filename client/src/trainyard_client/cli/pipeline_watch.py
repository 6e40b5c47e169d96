"""Following a pipeline run until it ends (``pipeline run --wait``, ``pipeline status --watch``).

On a terminal: a live table of the steps (state, job, duration, jobs done/failed/total) redrawn
every poll. Elsewhere (CI, a pipe): one line per step change, so a log reads as the run went.
The view is pure (``step_views``, ``changed_lines``); ``follow`` polls and draws.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

POLL_SECONDS = 1.0
ENDED_JOB_STATES = frozenset({"succeeded", "failed", "cancelled", "timed_out", "rejected"})


@dataclass(frozen=True)
class StepView:
    """One step as shown: ``total`` > 1 for an array (its jobs counted, no single job)."""

    name: str
    state: str
    job_id: str | None
    seconds: float | None
    done: int
    failed: int
    total: int
    reason: str | None
    sweep: bool = False  # a sweep step: its "job" is its sweep (trainyard sweep status ID)
    cached_from: str | None = None  # a step cache hit: its jobs are this run's, none submitted

    @property
    def change(self) -> tuple[str, str | None, int, int]:
        """What a line is printed for when it changes (not the duration: it always does)."""
        return self.state, self.job_id, self.done, self.failed


def step_views(run: Any, records: dict[str, Any], now: datetime) -> list[StepView]:
    """The steps of ``run`` in the pipeline's order; ``records``: job records by id (the single
    jobs of steps, for their durations). An array's counts come from the jobs the reply holds
    (at most 1000 per step: the API trims a run's reply)."""
    counts = run.job_counts()
    views = []
    for spec in run.spec.steps:
        step = run.steps[spec.name]
        mine = counts[spec.name]
        total = sum(mine.values())
        failed = sum(mine[k] for k in ("failed", "timed_out", "cancelled", "rejected"))
        job = step.jobs.get(0) if total == 1 else None
        job_id = job.job_id if job is not None else None
        cache = getattr(step, "cache", None)
        cached_from = cache.from_run if cache is not None and cache.state == "hit" else None
        record = records.get(job_id) if job_id and cached_from is None else None
        views.append(
            StepView(
                name=spec.name,
                state=step.state.value,
                job_id=job_id,
                seconds=_seconds(record, now) if record is not None else None,
                done=mine["succeeded"],
                failed=failed,
                total=total,
                reason=step.reason,
                sweep=spec.sweep is not None,
                cached_from=cached_from,
            )
        )
    return views


def _seconds(record: Any, now: datetime) -> float:
    """From the job's start (running, else its submission) to its end (or now)."""
    began = record.state_times.get("running") or record.submitted_at
    state = record.state.value
    ended = record.state_times.get(state) if state in ENDED_JOB_STATES else None
    seconds: float = ((ended or now) - began).total_seconds()
    return max(0.0, seconds)


def describe(view: StepView) -> str:
    """A step in one line of plain text (for a log)."""
    parts = [view.name, view.state]
    if view.cached_from:
        parts.append(f"cached from {view.cached_from}")
    if view.total > 1:
        parts.append(f"{view.done}/{view.total} done, {view.failed} failed")
    elif view.job_id:
        parts.append(f"{'sweep' if view.sweep else 'job'} {view.job_id}")
    if view.seconds is not None:
        parts.append(f"{view.seconds:.1f}s")
    if view.reason:
        parts.append(f"({view.reason})")
    return " ".join(parts)


def changed_lines(seen: dict[str, tuple[str, str | None, int, int]], views: list[StepView]) -> list[str]:
    """A line for each step that changed since ``seen`` (updated in place)."""
    lines = []
    for view in views:
        if seen.get(view.name) != view.change:
            seen[view.name] = view.change
            lines.append(describe(view))
    return lines


def live_table(run: Any, views: list[StepView]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    from trainyard_client.cli.base import styled

    title = f"{escape(run.spec.name)} {run.run_id} {styled(run.state.value)}"
    table = Table(title=title, title_justify="left")
    for column in ("step", "state", "job", "duration", "jobs", "reason"):
        table.add_column(column, justify="right" if column in ("duration", "jobs") else "left")
    for view in views:
        jobs = f"{view.done}/{view.total}" + (f" ({view.failed} failed)" if view.failed else "")
        table.add_row(
            escape(view.name),
            styled(view.state) + (" [cyan](cached)[/]" if view.cached_from else ""),
            (f"sweep {view.job_id}" if view.sweep else view.job_id) if view.job_id else "",
            f"{view.seconds:.1f}s" if view.seconds is not None else "",
            jobs,
            f"[dim]{escape(view.reason)}[/]" if view.reason else "",
        )
    return table


class JobTimes:
    """The job records the durations need, each read while its job runs and kept once it ended."""

    def __init__(self, read: Callable[[str], Any]) -> None:
        self.read = read
        self.records: dict[str, Any] = {}

    def refresh(self, run: Any) -> dict[str, Any]:
        for spec in run.spec.steps:
            step = run.steps[spec.name]
            # a sweep step's "job" is its sweep: no job record to read
            job = step.jobs.get(0) if len(step.jobs) == 1 and spec.sweep is None else None
            if job is None or not job.job_id:
                continue
            kept = self.records.get(job.job_id)
            if kept is not None and kept.state.value in ENDED_JOB_STATES:
                continue
            try:
                self.records[job.job_id] = self.read(job.job_id)
            except Exception:  # a duration is not worth failing the watch for
                continue
        return self.records


def follow(
    client: Any,
    run: Any,
    live: bool,
    say: Callable[[str], None],
    poll: float = POLL_SECONDS,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Any:
    """Poll ``run`` until it ends and return it as it ended. ``live``: redraw a table on the
    terminal; else ``say`` a line per step change and one when the run ends."""
    times = JobTimes(client.get)
    if live:
        from rich.live import Live

        from trainyard_client import cli

        views = step_views(run, times.refresh(run), clock())
        with Live(live_table(run, views), console=cli.out, transient=True) as shown:
            while run.state.value == "running":
                time.sleep(poll)
                run = client.pipeline(run.run_id)
                shown.update(live_table(run, step_views(run, times.refresh(run), clock())))
        return run
    seen: dict[str, tuple[str, str | None, int, int]] = {}
    while True:
        for line in changed_lines(seen, step_views(run, times.refresh(run), clock())):
            say(f"{clock():%H:%M:%S} {line}")
        if run.state.value != "running":
            say(f"{clock():%H:%M:%S} run {run.run_id} {run.state.value}")
            return run
        time.sleep(poll)
        run = client.pipeline(run.run_id)
