"""``-o table|wide|json|yaml|name`` (kubectl's convention) for every command that shows something.

JSON and YAML are the API's records. A table adapts to a terminal; piped, it is plain aligned
columns, one line a row, that never wrap (so `grep`, `awk` and `cut` see whole rows)."""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from trainyard_client import cli


class Output(enum.StrEnum):
    TABLE = "table"
    WIDE = "wide"
    JSON = "json"
    YAML = "yaml"
    NAME = "name"


OutputOption = Annotated[
    Output,
    typer.Option("--output", "-o", help="table, wide (more columns), json, yaml, or name (ids only)"),
]


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[Any], str]
    wide_only: bool = False
    wrap: bool = False  # a terminal table may fold it; plain output never does
    style: Callable[[str], str] | None = None  # rich markup around the (escaped) text


def record_of(item: Any) -> Any:
    """The API's JSON form of an SDK object (pydantic model, queue entry, dict)."""
    if hasattr(item, "model_dump"):
        return item.model_dump(mode="json")
    if hasattr(item, "config") and hasattr(item, "revision"):  # a QueueEntry: the API's row
        return {**item.config.model_dump(mode="json"), "revision": item.revision}
    return item


def print_data(data: Any, fmt: Output) -> None:
    """JSON or YAML of ``data`` on stdout, plain (no markup, no wrapping)."""
    if fmt == Output.JSON:
        import json

        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    else:
        import yaml

        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    sys.stdout.write(text)
    sys.stdout.flush()


def structured(fmt: Output) -> bool:
    return fmt in (Output.JSON, Output.YAML)


def emit(
    rows: Sequence[Any],
    columns: Sequence[Column],
    fmt: Output,
    name: Callable[[Any], str],
    empty: str,
) -> None:
    """Print ``rows`` in the format asked for; ``empty`` is said (on stderr) when a table has none."""
    if structured(fmt):
        print_data([record_of(row) for row in rows], fmt)
        return
    if fmt == Output.NAME:
        for row in rows:
            sys.stdout.write(name(row) + "\n")
        sys.stdout.flush()
        return
    if not rows:
        sys.stdout.write(empty + "\n")  # plain text: "no jobs yet"
        return
    shown = [c for c in columns if fmt == Output.WIDE or not c.wide_only]
    cells = [[column.value(row) for column in shown] for row in rows]
    if on_terminal():
        _rich_table(shown, cells)
    else:
        plain_table([c.header.upper() for c in shown], cells)


def on_terminal() -> bool:
    """Whether stdout is a terminal: asked of the console when one was made (tests swap it in),
    else of the stream itself, so a piped listing never loads rich."""
    console = vars(cli).get("out")
    return bool(console.is_terminal) if console is not None else sys.stdout.isatty()


def _rich_table(columns: Sequence[Column], cells: list[list[str]]) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    for column in columns:
        table.add_column(
            column.header, no_wrap=not column.wrap, overflow="fold" if column.wrap else "ellipsis"
        )
    for row in cells:
        table.add_row(
            *((c.style(escape(v)) if c.style else escape(v)) for c, v in zip(columns, row, strict=True))
        )
    cli.out.print(table)


def plain_table(headers: Sequence[str], cells: list[list[str]]) -> None:
    """Aligned columns separated by two spaces, one line a row, never wrapped (kubectl's piped form)."""
    rows = [list(headers), *[[" ".join(v.split()) or "-" for v in row] for row in cells]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    for row in rows:
        sys.stdout.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")
    sys.stdout.flush()
