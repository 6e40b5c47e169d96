"""Trigger commands: ``trainyard trigger create FILE | list | get NAME | suspend NAME | resume
NAME | delete NAME``, each with ``-o json``."""

from __future__ import annotations

from typing import Any

import typer

from trainyard_client.cli.output import Output
from trainyard_client.cli.records import (
    add_create_command,
    add_delete_command,
    add_list_command,
    add_named_command,
    print_one,
)

trigger: typer.Typer = typer.Typer(
    help="Triggers: a pipeline started by events on bus subjects (docs/workflows.md).", no_args_is_help=True
)
NAME = typer.Argument(metavar="NAME", help="the trigger's name")


def _show(record: Any, fmt: Output) -> None:
    print_one(fmt, record.model_dump(mode="json"), record.spec.name, lambda: _line(record))


def _line(record: Any) -> str:
    from rich.markup import escape

    spec = record.spec
    debounce = f" debounce {spec.debounce_seconds:g}s" if spec.debounce_seconds else ""
    turned_away = (
        f"filtered {record.filtered}, deduplicated {record.deduplicated}, debounced {record.debounced}, "
        f"invalid {record.invalid}, bad {record.bad_events}, while suspended {record.suspended_events}"
    )
    last = f"  last run {record.last_run_id}" if record.last_run_id else ""
    state = "[yellow]suspended[/]" if spec.suspended else "[green]active[/]"
    return (
        f"{escape(spec.name)}  {state}  {escape(spec.subject)}{debounce}  fired {record.fired}  "
        f"[dim]{turned_away}{last}[/]"
    )


add_create_command(
    trigger,
    "trigger",
    "Create a trigger; events published from now on start its pipeline.",
    lambda client, document: client.create_trigger(document),
    _show,
)
add_list_command(
    trigger,
    "Triggers, by name, with what they did with events.",
    lambda client, limit: client.triggers(limit),
    lambda record: record.spec.name,
    _line,
)
add_named_command(
    trigger,
    "get",
    NAME,
    "A trigger: its rule, the runs it fired and the events it turned away.",
    lambda client, name: client.trigger(name),
    _show,
)
add_named_command(
    trigger,
    "suspend",
    NAME,
    "Suspend: events on its subject are counted, never fired, until it is resumed.",
    lambda client, name: client.suspend_trigger(name),
    _show,
)
add_named_command(
    trigger,
    "resume",
    NAME,
    "Resume: events from now on fire again (none that came while it was suspended).",
    lambda client, name: client.resume_trigger(name),
    _show,
)
add_delete_command(
    trigger,
    "trigger",
    NAME,
    "Delete a trigger; the runs it started go on.",
    lambda client, name: client.delete_trigger(name),
)
