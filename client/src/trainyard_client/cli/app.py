"""The ``trainyard`` app: global options, and every command module's commands in help order."""

from __future__ import annotations

from typing import Annotated

import typer

from trainyard_client.cli import admin, jobs, simulate, stack
from trainyard_client.cli.base import Settings

app = typer.Typer(
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
    from trainyard_client.sdk import default_url

    ctx.obj = Settings(url or default_url(), token)


for command in (jobs.submit, jobs.why, jobs.status, jobs.logs, jobs.cancel, jobs.models):
    app.command()(command)
app.add_typer(admin.dlq, name="dlq")
app.add_typer(admin.queues, name="queues")
app.add_typer(admin.tokens, name="tokens")
app.command()(stack.up)
app.command()(simulate.simulate)


def main() -> None:
    app()
