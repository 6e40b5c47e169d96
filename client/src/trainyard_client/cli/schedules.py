"""Schedule commands: ``trainyard schedule create FILE | list | get NAME | suspend NAME |
resume NAME | delete NAME | backfill NAME --from T --to T``, each with ``-o json``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer

from trainyard_client import cli
from trainyard_client.cli.base import EXIT_INVALID, fail
from trainyard_client.cli.output import Output, OutputOption, print_data
from trainyard_client.cli.records import (
    add_create_command,
    add_delete_command,
    add_list_command,
    add_named_command,
    print_one,
    show_fetched,
)

schedule: typer.Typer = typer.Typer(
    help="Schedules: a pipeline on a cron, in a time zone (docs/workflows.md).", no_args_is_help=True
)
NAME = typer.Argument(metavar="NAME", help="the schedule's name")


def _when(value: str, option: str) -> datetime:
    """An ISO 8601 instant with its offset (``2026-03-01T03:00:00+01:00``; ``Z`` for UTC)."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        fail(
            f"[bold red]{option}[/]: expected an ISO 8601 time such as 2026-03-01T03:00:00+01:00",
            EXIT_INVALID,
        )
    if moment.tzinfo is None:
        fail(f"[bold red]{option}[/]: give the offset too (+01:00, or Z for UTC)", EXIT_INVALID)
    return moment


def _show(record: Any, fmt: Output) -> None:
    print_one(fmt, record.model_dump(mode="json"), record.spec.name, lambda: _line(record))


def _line(record: Any) -> str:
    from rich.markup import escape

    spec = record.spec
    state = "[yellow]suspended[/]" if spec.suspended else "[green]active[/]"
    dropped = f"missed {record.missed}, forbidden {record.forbidden}, replaced {record.replaced}"
    return (
        f"{escape(spec.name)}  {escape(spec.cron)} {escape(spec.timezone)}  {state}  "
        f"{spec.concurrency.value}  fired {record.fired}  [dim]{dropped}  "
        f"last tick {record.last_tick:%Y-%m-%d %H:%M} UTC[/]"
    )


add_create_command(
    schedule,
    "schedule",
    "Create a schedule; its first run is its first tick from now.",
    lambda client, document: client.create_schedule(document),
    _show,
)
add_list_command(
    schedule,
    "Schedules, by name.",
    lambda client, limit: client.schedules(limit),
    lambda record: record.spec.name,
    _line,
)
add_named_command(
    schedule,
    "get",
    NAME,
    "A schedule: its cron, state, last tick, fired and dropped ticks.",
    lambda client, name: client.schedule(name),
    _show,
)
add_named_command(
    schedule,
    "suspend",
    NAME,
    "Suspend: ticks are dropped until it is resumed.",
    lambda client, name: client.suspend_schedule(name),
    _show,
)
add_named_command(
    schedule,
    "resume",
    NAME,
    "Resume from now: what the suspension dropped does not fire (backfill starts it).",
    lambda client, name: client.resume_schedule(name),
    _show,
)
add_delete_command(
    schedule,
    "schedule",
    NAME,
    "Delete a schedule; the runs it started go on.",
    lambda client, name: client.delete_schedule(name),
)


@schedule.command("backfill")
def backfill(
    ctx: typer.Context,
    name: Annotated[str, NAME],
    start: Annotated[str, typer.Option("--from", help="first instant, ISO 8601 with offset (inclusive)")],
    end: Annotated[str, typer.Option("--to", help="last instant, ISO 8601 with offset (inclusive)")],
    output: OutputOption = Output.TABLE,
) -> None:
    """Start the ticks between --from and --to once each (a tick that fired is not started again)."""
    first, last = _when(start, "--from"), _when(end, "--to")
    show_fetched(
        ctx,
        lambda client: client.backfill_schedule(name, first, last),
        lambda run_ids, fmt: _print_run_ids(name, run_ids, fmt),
        output,
    )


def _print_run_ids(name: str, run_ids: list[str], fmt: Output) -> None:
    if fmt in (Output.JSON, Output.YAML):
        print_data({"name": name, "run_ids": run_ids}, fmt)
        return
    for run_id in run_ids:
        cli.out.print(run_id)
