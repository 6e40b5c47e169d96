"""What the commands on workflow objects share (pipelines, schedules, arrays, triggers): one
object fetched and shown, a listing, a delete, a document read from a file. Each command keeps
only what is its own: the SDK call and how one object reads as a line."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from trainyard_client import cli
from trainyard_client.cli.base import EXIT_INVALID, api_errors, fail, settings
from trainyard_client.cli.output import Output, OutputOption, print_data

if TYPE_CHECKING:
    from trainyard_client.sdk import TrainyardClient


def show_fetched(
    ctx: typer.Context,
    fetch: Callable[[TrainyardClient], Any],
    show: Callable[[Any, Output], None],
    output: Output,
) -> None:
    """Ask the API (``fetch`` with a client), then ``show`` the answer; API errors become the CLI's
    messages and exit codes."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        found = fetch(client)
    show(found, output)


def print_one(fmt: Output, data: Any, name: str, render: Callable[[], Any]) -> None:
    """One object: ``data`` for -o json|yaml, its ``name`` for -o name, else what ``render`` gives."""
    if fmt in (Output.JSON, Output.YAML):
        print_data(data, fmt)
        return
    cli.out.print(name if fmt == Output.NAME else render())


def print_listing(
    items: Iterable[Any], fmt: Output, name: Callable[[Any], str], line: Callable[[Any], str]
) -> None:
    """Objects (pydantic models): their records for -o json|yaml, else one line each."""
    if fmt in (Output.JSON, Output.YAML):
        print_data([item.model_dump(mode="json") for item in items], fmt)
        return
    for item in items:
        cli.out.print(name(item) if fmt == Output.NAME else line(item))


def read_text(file: Path) -> str:
    from rich.markup import escape

    try:
        return file.read_text()
    except OSError as exc:
        fail(
            f"[bold red]cannot read {escape(str(file))}[/]: {escape(exc.strerror or str(exc))}", EXIT_INVALID
        )


def read_mapping(file: Path, kind: str) -> dict[str, Any]:
    """A document of fields (YAML or JSON), parsed here; its fields are checked by the service (422)."""
    from rich.markup import escape

    from trainyard_contracts import SpecError, parse_spec_document

    text = read_text(file)
    try:
        document = parse_spec_document(text)
    except SpecError as exc:
        fail(f"[bold red]invalid {kind}: {escape(str(file))}[/]: {escape(str(exc))}", EXIT_INVALID)
    if not isinstance(document, dict):
        fail(f"[bold red]invalid {kind}: {escape(str(file))}[/]: expected a mapping of fields", EXIT_INVALID)
    return document


def add_create_command(
    group: typer.Typer,
    kind: str,
    help_text: str,
    create: Callable[[TrainyardClient, dict[str, Any]], Any],
    show: Callable[[Any, Output], None],
) -> None:
    """``<group> create FILE [-o ...]``: the document (YAML or JSON) read here, checked by the service."""

    def create_command(ctx: typer.Context, file: Path, output: Output = Output.TABLE) -> None:
        document = read_mapping(file, kind)
        show_fetched(ctx, lambda client: create(client, document), show, output)

    argument = typer.Argument(metavar="FILE", help=f"the {kind} document (YAML or JSON)")
    _command(group, "create", help_text, create_command, file=Annotated[Path, argument])


def add_list_command(
    group: typer.Typer,
    help_text: str,
    fetch: Callable[[TrainyardClient, int], list[Any]],
    name: Callable[[Any], str],
    line: Callable[[Any], str],
    default_limit: int = 100,
) -> None:
    """``<group> list [--limit N] [-o ...]``: ``fetch(client, limit)``, one line per object."""

    def list_command(ctx: typer.Context, limit: int = default_limit, output: Output = Output.TABLE) -> None:
        show_fetched(
            ctx,
            lambda client: fetch(client, limit),
            lambda found, fmt: print_listing(found, fmt, name, line),
            output,
        )

    _command(group, "list", help_text, list_command, limit=Annotated[int, typer.Option(min=1, max=1000)])


def add_named_command(
    group: typer.Typer,
    verb: str,
    argument: Any,
    help_text: str,
    act: Callable[[TrainyardClient, str], Any],
    show: Callable[[Any, Output], None],
) -> None:
    """``<group> <verb> ID [-o ...]``: ``act(client, id)``, its answer shown by ``show``."""

    def named_command(ctx: typer.Context, key: str, output: Output = Output.TABLE) -> None:
        show_fetched(ctx, lambda client: act(client, key), show, output)

    _command(group, verb, help_text, named_command, key=Annotated[str, argument])


def add_delete_command(
    group: typer.Typer,
    kind: str,
    argument: Any,
    help_text: str,
    delete: Callable[[TrainyardClient, str], Any],
) -> None:
    """``<group> delete NAME [-o ...]``: says ``{"name", "deleted": true}`` for -o json|yaml."""

    def delete_command(ctx: typer.Context, name: str, output: Output = Output.TABLE) -> None:
        show_fetched(
            ctx,
            lambda client: delete(client, name),
            lambda _, fmt: print_one(
                fmt, {"name": name, "deleted": True}, name, lambda: f"deleted {kind} {name}"
            ),
            output,
        )

    _command(group, "delete", help_text, delete_command, name=Annotated[str, argument])


def _command(
    group: typer.Typer, verb: str, help_text: str, function: Callable[..., None], **params: Any
) -> None:
    """Register ``function`` as ``verb`` with its parameters' typer declarations given as objects:
    the module's annotations are strings (``from __future__ import annotations``) that typer would
    evaluate where the factory's arguments are not in scope."""
    function.__annotations__ = {"ctx": typer.Context, **params, "output": OutputOption, "return": None}
    group.command(verb, help=help_text)(function)
