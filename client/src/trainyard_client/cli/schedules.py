"""Schedule commands: ``trainyard schedule create FILE | list | get NAME | suspend NAME |
resume NAME | delete NAME | backfill NAME --from T --to T``, each with ``-o json``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from trainyard_client import cli
from trainyard_client.cli.base import EXIT_INVALID, api_errors, fail, settings
from trainyard_client.cli.output import Output, OutputOption, print_data

schedule = typer.Typer(
    help="Schedules: a pipeline on a cron, in a time zone (docs/workflows.md).", no_args_is_help=True
)
NAME = typer.Argument(metavar="NAME", help="the schedule's name")


def _read_schedule(file: Path) -> dict[str, Any]:
    """The document, parsed here (YAML or JSON); its fields are checked by the service (422)."""
    from rich.markup import escape

    from trainyard_contracts import SpecError, parse_spec_document

    try:
        document = parse_spec_document(file.read_text())
    except OSError as exc:
        fail(
            f"[bold red]cannot read {escape(str(file))}[/]: {escape(exc.strerror or str(exc))}", EXIT_INVALID
        )
    except SpecError as exc:
        fail(f"[bold red]invalid schedule: {escape(str(file))}[/]: {escape(str(exc))}", EXIT_INVALID)
    if not isinstance(document, dict):
        fail(
            f"[bold red]invalid schedule: {escape(str(file))}[/]: expected a mapping of fields", EXIT_INVALID
        )
    return document


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
    if fmt in (Output.JSON, Output.YAML):
        print_data(record.model_dump(mode="json"), fmt)
        return
    if fmt == Output.NAME:
        cli.out.print(record.spec.name)
        return
    cli.out.print(_line(record))


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


@schedule.command("create")
def create(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="the schedule document (YAML or JSON)")],
    output: OutputOption = Output.TABLE,
) -> None:
    """Create a schedule; its first run is its first tick from now."""
    document = _read_schedule(file)
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        _show(client.create_schedule(document), output)


@schedule.command("list")
def list_schedules(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    output: OutputOption = Output.TABLE,
) -> None:
    """Schedules, by name."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        found = client.schedules(limit)
    if output in (Output.JSON, Output.YAML):
        print_data([s.model_dump(mode="json") for s in found], output)
        return
    for record in found:
        cli.out.print(record.spec.name if output == Output.NAME else _line(record))


@schedule.command("get")
def get(ctx: typer.Context, name: Annotated[str, NAME], output: OutputOption = Output.TABLE) -> None:
    """A schedule: its cron, state, last tick, fired and dropped ticks."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        _show(client.schedule(name), output)


@schedule.command("suspend")
def suspend(ctx: typer.Context, name: Annotated[str, NAME], output: OutputOption = Output.TABLE) -> None:
    """Suspend: ticks are dropped until it is resumed."""
    _set_suspended(ctx, name, True, output)


@schedule.command("resume")
def resume(ctx: typer.Context, name: Annotated[str, NAME], output: OutputOption = Output.TABLE) -> None:
    """Resume from now: what the suspension dropped does not fire (backfill starts it)."""
    _set_suspended(ctx, name, False, output)


def _set_suspended(ctx: typer.Context, name: str, suspended: bool, output: Output) -> None:
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        _show(client.suspend_schedule(name) if suspended else client.resume_schedule(name), output)


@schedule.command("delete")
def delete(ctx: typer.Context, name: Annotated[str, NAME], output: OutputOption = Output.TABLE) -> None:
    """Delete a schedule; the runs it started go on."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        client.delete_schedule(name)
    if output in (Output.JSON, Output.YAML):
        print_data({"name": name, "deleted": True}, output)
    else:
        cli.out.print(name if output == Output.NAME else f"deleted schedule {name}")


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
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        run_ids = client.backfill_schedule(name, first, last)
    if output in (Output.JSON, Output.YAML):
        print_data({"name": name, "run_ids": run_ids}, output)
        return
    for run_id in run_ids:
        cli.out.print(run_id)
