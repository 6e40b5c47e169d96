"""The ``trainyard`` app: global options, and every command module's commands in help order.

The commands are not registered on the Typer app: typer reads a command's signature (evaluating
every annotation) when it builds it, and building all of them took longer than the whole start-up
budget (docs/performance.md "CLI start-up"). The root group (``TrainyardGroup``) knows them by name
from ``COMMANDS`` and imports and builds one only when it is run, with typer's own builders, so a
command behaves exactly as if registered; ``trainyard --help`` lists them from their docstrings.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator, MutableMapping
from gettext import gettext
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from trainyard_client.cli.base import Settings

if TYPE_CHECKING:
    from typer._click import Command, Context, HelpFormatter

# name -> "module:attribute" under trainyard_client.cli, in help order (typer's: the single commands,
# then the groups). A function is a command; a typer.Typer is a group of them.
COMMANDS: dict[str, str] = {
    "submit": "jobs:submit",
    "why": "jobs:why",
    "status": "listing:status",
    "wait": "listing:wait",
    "logs": "jobs:logs",
    "metrics": "insight:metrics",
    "top": "insight:top",
    "cancel": "jobs:cancel",
    "purge": "jobs:purge",
    "executors": "jobs:executors",
    "audit": "models:audit",
    "up": "stack:up",
    "simulate": "simulate:simulate",
    "models": "models:models",
    "dlq": "admin:dlq",
    "queues": "admin:queues",
    "tokens": "admin:tokens",
    "pipeline": "pipelines:pipeline",
    "schedule": "schedules:schedule",
    "trigger": "triggers:trigger",
    "sweep": "sweeps:sweep",
    "array": "arrays:array",
}


def command_target(name: str) -> Any:
    """The function or ``typer.Typer`` that ``COMMANDS[name]`` names (importing its module)."""
    module, _, attribute = COMMANDS[name].partition(":")
    return getattr(importlib.import_module(f"trainyard_client.cli.{module}"), attribute)


def build_command(name: str, target: Any, root: TyperGroup) -> Command:
    """What ``app.command()(target)`` / ``app.add_typer(target, name=name)`` would have built."""
    from typer.main import get_command_from_info, get_group_from_info
    from typer.models import CommandInfo, TyperInfo

    if isinstance(target, typer.Typer):
        return get_group_from_info(
            TyperInfo(target, name=name),
            pretty_exceptions_short=app.pretty_exceptions_short,
            rich_markup_mode=root.rich_markup_mode,
            suggest_commands=root.suggest_commands,
        )
    return get_command_from_info(
        CommandInfo(name=name, callback=target),
        pretty_exceptions_short=app.pretty_exceptions_short,
        rich_markup_mode=root.rich_markup_mode,
    )


def listed_command(name: str, target: Any) -> Command:
    """A command as the root's help lists it (name, help, short help, hidden, deprecated) without
    its parameters: the same values typer would give the built one, at no cost."""
    if isinstance(target, typer.Typer):
        from typer.main import solve_typer_info_defaults
        from typer.models import TyperInfo

        info = solve_typer_info_defaults(TyperInfo(target, name=name))
        return TyperGroup(
            name=name,
            help=info.help,
            short_help=info.short_help,
            hidden=info.hidden,
            deprecated=info.deprecated,
        )
    return TyperCommand(name=name, help=inspect.getdoc(target))


class CommandTable(MutableMapping[str, "Command"]):
    """The root group's commands by name: every name of ``COMMANDS`` is there, and each is
    imported and built on first look."""

    def __init__(self, root: TyperGroup) -> None:
        self.root = root
        self.built: dict[str, Command] = {}

    def __getitem__(self, name: str) -> Command:
        if name not in self.built:
            if name not in COMMANDS:
                raise KeyError(name)
            self.built[name] = build_command(name, command_target(name), self.root)
        return self.built[name]

    def __setitem__(self, name: str, command: Command) -> None:
        self.built[name] = command

    def __delitem__(self, name: str) -> None:
        raise TypeError("the trainyard commands are fixed")

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*COMMANDS, *self.built]))

    def __len__(self) -> int:
        return len(set(COMMANDS) | set(self.built))


GLOBAL_OPTIONS = ("--url", "--token")


def hoist_global_options(args: list[str]) -> list[str]:
    """``trainyard status --url U`` means ``trainyard --url U status``: the global options move
    before the subcommand wherever they were typed (up to a ``--``)."""
    hoisted: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if arg in GLOBAL_OPTIONS and i + 1 < len(args):
            hoisted += args[i : i + 2]
            i += 2
            continue
        if arg.startswith(tuple(f"{o}=" for o in GLOBAL_OPTIONS)):
            hoisted.append(arg)
        else:
            rest.append(arg)
        i += 1
    return hoisted + rest


class TrainyardGroup(TyperGroup):
    """The root: global options hoisted, commands from ``COMMANDS`` built when used."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.table = CommandTable(self)
        self.commands = self.table

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(args))

    def list_commands(self, ctx: Context) -> list[str]:
        return list(self.commands)  # names only (typer's reads every command)

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        """typer's listing, from each command's name and help alone (none of them is built)."""
        listed = [
            (name, self.table.built.get(name) or listed_command(name, command_target(name)))
            for name in self.list_commands(ctx)
        ]
        listed = [(name, command) for name, command in listed if not command.hidden]
        if listed:
            limit = formatter.width - 6 - max(len(name) for name, _ in listed)
            with formatter.section(gettext("Commands")):
                formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in listed])


app = typer.Typer(
    cls=TrainyardGroup,
    rich_markup_mode=None,  # plain help: rich's help formatter alone costs more than the 150 ms budget
    name="trainyard",
    help="Trainyard: submit and follow training jobs, see registered models, run the embedded stack.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main_options(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option("--url", envvar="TRAINYARD_URL", help="the API (default http://127.0.0.1:8700)"),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="TRAINYARD_TOKEN", help="API token (default: <data dir>/api-token)"),
    ] = None,
) -> None:
    from trainyard_client.connection import default_url

    ctx.obj = Settings(url or default_url(), token)


def main() -> None:
    app()
