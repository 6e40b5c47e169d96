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
