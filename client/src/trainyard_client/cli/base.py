"""What every command shares: the connection settings, exit codes, and turning errors into messages."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import typer

from trainyard_client import cli

if TYPE_CHECKING:
    from trainyard_client.sdk import TrainyardClient
    from trainyard_contracts import FieldError, JobState

EXIT_OK, EXIT_JOB_FAILED, EXIT_INVALID, EXIT_UNREACHABLE, EXIT_REFUSED = 0, 1, 2, 3, 4

STATE_STYLE = {
    "submitted": "cyan",
    "queued": "cyan",
    "requeued": "yellow",
    "scheduled": "blue",
    "running": "bold blue",
    "succeeded": "bold green",
    "failed": "bold red",
    "timed_out": "bold red",
    "cancelled": "yellow",
    "rejected": "bold red",
}


@dataclass
class Settings:
    url: str
    token: str | None

    def bearer(self) -> str | None:
        """The token to send: --token / TRAINYARD_TOKEN, else the stack's token file (as the SDK)."""
        from trainyard_client.connection import default_token

        return self.token if self.token is not None else default_token()

    def client(self) -> TrainyardClient:
        from trainyard_client.sdk import TrainyardClient

        return TrainyardClient(self.url, self.token)


def settings(ctx: typer.Context) -> Settings:
    obj = ctx.obj
    if not isinstance(obj, Settings):  # a command invoked without the callback (tests)
        from trainyard_client.connection import default_url

        obj = Settings(default_url(), None)
    return obj


def styled(state: str | JobState) -> str:
    value = str(getattr(state, "value", state))
    return f"[{STATE_STYLE.get(value, 'white')}]{value}[/]"


def fail(message: str, code: int) -> NoReturn:
    cli.err.print(message)
    raise typer.Exit(code)


def print_field_errors(errors: list[FieldError], title: str = "invalid job spec") -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, title_style="bold red", title_justify="left", show_lines=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("problem", overflow="fold")
    for error in errors:
        table.add_row(escape(error.field), escape(error.message))
    cli.err.print(table)


@contextlib.contextmanager
def api_errors(url: str) -> Iterator[None]:
    """Turn SDK errors into a clear message and the CLI's exit codes."""
    from trainyard_client.connection import TrainyardError, TrainyardUnavailable

    try:
        yield
    except TrainyardUnavailable as exc:
        from rich.markup import escape

        fail(
            f"[bold red]cannot reach Trainyard at {escape(url)}[/] — is `trainyard up` running?"
            f"\n[dim]{escape(exc.detail)}[/]",
            EXIT_UNREACHABLE,
        )
    except TrainyardError as exc:
        from rich.markup import escape

        if exc.status == 422 and exc.errors:
            print_field_errors(exc.errors, f"the server rejected the spec: {exc.title}")
            raise typer.Exit(EXIT_INVALID) from None
        detail = f": {escape(exc.detail)}" if exc.detail else ""
        fail(f"[bold red]{exc.status} {escape(exc.title)}[/]{detail}", EXIT_REFUSED)
