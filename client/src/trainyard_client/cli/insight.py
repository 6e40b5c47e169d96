"""``trainyard metrics JOB``: what a job reported with ``trainyard.report``, a sparkline per metric."""

from __future__ import annotations

import json
import math
import sys
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from trainyard_client import cli
from trainyard_client.cli.base import api_errors, settings, styled
from trainyard_client.cli.output import Output, OutputOption, print_data

BARS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 40
JOB = typer.Argument(metavar="JOB")


def sparkline(values: Iterable[float], width: int = SPARK_WIDTH) -> str:
    """The last ``width`` values as block characters, lowest to highest (flat: the middle bar)."""
    tail = list(values)[-width:]
    if not tail:
        return ""
    low, high = min(tail), max(tail)
    if math.isclose(low, high):
        return BARS[len(BARS) // 2] * len(tail)
    scale = (len(BARS) - 1) / (high - low)
    return "".join(BARS[round((v - low) * scale)] for v in tail)


@dataclass
class Series:
    """One metric's history as far as a terminal shows it, and its extremes over every point."""

    values: deque[float] = field(default_factory=lambda: deque(maxlen=SPARK_WIDTH))
    step: int = 0
    low: float = math.inf
    high: float = -math.inf

    def add(self, step: int, value: float) -> None:
        self.values.append(value)
        self.step = step
        self.low, self.high = min(self.low, value), max(self.high, value)


class Board:
    """Every metric of one job (its latest attempt's points: a new attempt starts again)."""

    def __init__(self) -> None:
        self.attempt = 0
        self.series: dict[str, Series] = {}
        self.points = 0

    def add(self, attempt: int, step: int, values: Mapping[str, float]) -> None:
        if attempt < self.attempt:
            return
        if attempt > self.attempt:
            self.attempt, self.series = attempt, {}
        self.points += 1
        for name, value in values.items():
            self.series.setdefault(name, Series()).add(step, value)

    def table(self, title: str) -> Any:
        from rich.table import Table

        table = Table(title=title, title_justify="left", box=None, pad_edge=False)
        for header in ("METRIC", "STEP", "LAST", "MIN", "MAX", "HISTORY"):
            table.add_column(header, justify="right" if header in ("STEP", "LAST", "MIN", "MAX") else "left")
        for name, s in sorted(self.series.items()):
            last = s.values[-1] if s.values else math.nan
            numbers = (f"{last:.6g}", f"{s.low:.6g}", f"{s.high:.6g}")
            table.add_row(name, str(s.step), *numbers, sparkline(s.values))
        return table


def metrics(
    ctx: typer.Context,
    job_id: Annotated[str, JOB],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep updating until the job ends")] = False,
    attempt: Annotated[int | None, typer.Option("--attempt", min=1, help="one attempt only")] = None,
    last: Annotated[int, typer.Option("--last", min=1, max=100_000, help="the newest N points")] = 10_000,
    output: OutputOption = Output.TABLE,
) -> None:
    """What a job reported with trainyard.report(step, **metrics): a sparkline per metric."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        if not follow:
            answer = client.metrics(job_id, attempt=attempt, last=last)
            if output in (Output.JSON, Output.YAML):
                print_data(answer, output)
                return
            board = Board()
            for point in answer["points"]:
                board.add(point["attempt"], point["step"], point["values"])
            _show(board, job_id, answer.get("state"), answer.get("dropped", 0))
            return
        try:
            _follow(client, job_id, attempt, output)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None


def _title(board: Board, job_id: str, state: str | None) -> str:
    shown = styled(state) if state else ""
    return f"job [bold]{job_id}[/] {shown}  attempt {board.attempt}, {board.points} points"


def _show(board: Board, job_id: str, state: str | None, dropped: int) -> None:
    if not board.series:
        cli.out.print(f"job [bold]{job_id}[/] {styled(state) if state else ''}: no metrics reported")
        return
    cli.out.print(board.table(_title(board, job_id, state)))
    if dropped:
        cli.err.print(f"[dim]{dropped} reported values or lines were dropped (see the job's log)[/]")


def _follow(client: Any, job_id: str, attempt: int | None, output: Output) -> None:
    if output in (Output.JSON, Output.YAML):  # one batch a line, as published
        for item in client.follow_metrics(job_id, attempt=attempt):
            if isinstance(item, str):
                break
            sys.stdout.write(json.dumps(item.model_dump(mode="json")) + "\n")
            sys.stdout.flush()
        return
    from rich.live import Live

    board = Board()
    state: str | None = "running"
    with Live(board.table(_title(board, job_id, state)), console=cli.out, refresh_per_second=4) as live:
        for item in client.follow_metrics(job_id, attempt=attempt):
            if isinstance(item, str):
                state = item
                live.update(board.table(_title(board, job_id, state)))
                break
            else:
                for point in item.points:
                    board.add(item.attempt, point.step, point.values)
            live.update(board.table(_title(board, job_id, state)))


TOP_SECONDS = 2.0
TOP_VALUES = 6  # metrics shown per job (alphabetical); -o json has them all
SYSTEM_PREFIX = "sys."  # the executor's resource samples (docs/insight.md): CPU and MEM columns


def top(
    ctx: typer.Context,
    queue: Annotated[str | None, typer.Option("--queue", help="only jobs of this queue")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=200, help="at most this many jobs")] = 20,
    once: Annotated[bool, typer.Option("--once", help="print once instead of refreshing")] = False,
    output: OutputOption = Output.TABLE,
) -> None:
    """Running jobs with the latest metrics each reported, refreshing every 2 s until Ctrl-C."""
    from trainyard_client.cli.output import on_terminal

    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        if output in (Output.JSON, Output.YAML):
            print_data({"jobs": top_rows(client, queue, limit)}, output)
            return
        if once or not on_terminal():
            cli.out.print(top_table(top_rows(client, queue, limit)))
            return
        import time

        from rich.live import Live

        try:
            with Live(top_table(top_rows(client, queue, limit)), console=cli.out, screen=False) as live:
                while True:
                    time.sleep(TOP_SECONDS)
                    live.update(top_table(top_rows(client, queue, limit)))
        except KeyboardInterrupt:
            raise typer.Exit(0) from None


def top_rows(client: Any, queue: str | None, limit: int) -> list[dict[str, Any]]:
    """Each running job (newest first) with its newest reported point: one listing, then one
    cheap read per job (the newest batch only)."""
    from trainyard_client.sdk import TrainyardError

    rows = []
    for job in client.list(state="running", queue=queue, limit=limit):
        try:
            points = client.metrics(job.job_id, latest=True)["points"]
        except TrainyardError:  # ended and purged meanwhile
            points = []
        # the executor's resource samples (sys.*) travel among the job's points: apart here
        reported = [p for p in points if not all(name.startswith(SYSTEM_PREFIX) for name in p["values"])]
        sampled = [p for p in points if any(name.startswith(SYSTEM_PREFIX) for name in p["values"])]
        point = reported[-1] if reported else None
        use = sampled[-1]["values"] if sampled else {}
        rows.append(
            {
                "job_id": job.job_id,
                "name": job.name,
                "queue": job.queue,
                "attempt": job.attempt,
                "executor_id": job.executor_id,
                "submitted_at": job.submitted_at.isoformat(),
                "step": point["step"] if point else None,
                "metrics": point["values"] if point else {},
                "cpu": use.get("sys.cpu"),
                "rss_bytes": use.get("sys.rss_bytes"),
                "gpu": use.get("sys.gpu"),  # GPUs busy (NVML), where the job has GPUs
            }
        )
    return rows


def resources(row: dict[str, Any]) -> tuple[str, str]:
    cpu, rss = row.get("cpu"), row.get("rss_bytes")
    return ("-" if cpu is None else f"{cpu:.2f}", "-" if rss is None else f"{rss / 2**20:.0f}Mi")


def top_table(rows: list[dict[str, Any]]) -> Any:
    from datetime import datetime

    from rich.markup import escape
    from rich.table import Table

    from trainyard_client.cli.formatting import age

    table = Table(box=None, pad_edge=False)
    # CPU (cores in use) and MEM (resident) where the executor samples them (docs/insight.md)
    sampled = any(row.get("cpu") is not None or row.get("rss_bytes") is not None for row in rows)
    gpus = any(row.get("gpu") is not None for row in rows)  # GPUs busy, where sampled through NVML
    headers = (
        "JOB",
        "NAME",
        "QUEUE",
        "EXECUTOR",
        "AGE",
        *(("CPU", "MEM") if sampled else ()),
        *(("GPU",) if gpus else ()),
        "STEP",
        "METRICS",
    )
    for header in headers:
        right = header in ("CPU", "MEM", "GPU", "STEP")
        table.add_column(header, justify="right" if right else "left", no_wrap=header != "METRICS")
    for row in rows:
        values = sorted(row["metrics"].items())
        shown = " ".join(f"{name}={value:.4g}" for name, value in values[:TOP_VALUES])
        if len(values) > TOP_VALUES:
            shown += f" (+{len(values) - TOP_VALUES})"
        table.add_row(
            row["job_id"],
            escape(row["name"]),
            row["queue"],
            escape(row["executor_id"] or "-"),
            age(datetime.fromisoformat(row["submitted_at"])),
            *(resources(row) if sampled else ()),
            *(("-" if row.get("gpu") is None else f"{row['gpu']:.2f}",) if gpus else ()),
            "-" if row["step"] is None else str(row["step"]),
            escape(shown) if shown else "[dim]no metrics reported[/]",
        )
    if not rows:
        table.add_row("[dim]no running jobs[/]", *([""] * (len(headers) - 1)))
    return table
