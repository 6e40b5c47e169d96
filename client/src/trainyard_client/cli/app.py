"""The ``trainyard`` app: global options, and every command module's commands in help order."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from trainyard_client.cli import (
    admin,
    arrays,
    insight,
    jobs,
    listing,
    models,
    pipelines,
    schedules,
    simulate,
    stack,
    sweeps,
    triggers,
)
from trainyard_client.cli.base import Settings

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
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(args))


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


for command in (
    jobs.submit,
    jobs.why,
    listing.status,
    listing.wait,
    jobs.logs,
    insight.metrics,
    insight.top,
    jobs.cancel,
    jobs.purge,
):
    app.command()(command)
app.add_typer(models.models, name="models")
app.command()(jobs.executors)
app.command()(models.audit)
app.add_typer(admin.dlq, name="dlq")
app.add_typer(admin.queues, name="queues")
app.add_typer(admin.tokens, name="tokens")
app.add_typer(pipelines.pipeline, name="pipeline")
app.add_typer(schedules.schedule, name="schedule")
app.add_typer(triggers.trigger, name="trigger")
app.add_typer(sweeps.sweep, name="sweep")
app.add_typer(arrays.array, name="array")
app.command()(stack.up)
app.command()(simulate.simulate)


def main() -> None:
    app()
