"""Job arrays: ``trainyard submit`` of a spec with ``array:``, ``trainyard array status|cancel ID``."""

from __future__ import annotations

from typing import Any

import typer

from trainyard_client.cli.base import styled
from trainyard_client.cli.output import Output
from trainyard_client.cli.records import add_named_command, print_one

array: typer.Typer = typer.Typer(
    help="Job arrays: one spec, N jobs (docs/workflows.md).", no_args_is_help=True
)
ARRAY = typer.Argument(metavar="ARRAY", help="the array id")


def check_array_field(data: dict[str, Any]) -> None:
    """SpecError naming ``array`` when its Slurm syntax is wrong (checked here, before sending)."""
    from trainyard_contracts import FieldError, SpecError
    from trainyard_contracts.arrays import ArraySyntaxError, parse_array

    if "array" not in data:
        return
    try:
        parse_array(data["array"])
    except (ArraySyntaxError, TypeError) as exc:
        message = str(exc) if isinstance(exc, ArraySyntaxError) else 'expected Slurm syntax such as "0-99%8"'
        raise SpecError([FieldError(field="array", message=message)]) from None


def is_array(submitted: Any) -> bool:
    """Whether the spec about to be submitted (text or mapping) asks for an array."""
    from trainyard_contracts import parse_spec_document

    data = submitted if isinstance(submitted, dict) else parse_spec_document(submitted)
    return "array" in data


def show_array(status: Any, fmt: Output) -> None:
    data = {"kind": "array", **status.model_dump(mode="json")}
    print_one(fmt, data, status.array_id, lambda: _summary(status))


def _summary(status: Any) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in status.counts.items() if n)
    line = (
        f"array [bold]{status.array_id}[/] {status.name} [{status.array}] {styled(status.state.value)}: "
        f"{status.count} jobs ({counts})"
    )
    return f"{line}\n  {status.reason}" if status.reason else line


add_named_command(
    array,
    "status",
    ARRAY,
    "An array's jobs counted per state.",
    lambda c, array_id: c.array(array_id),
    show_array,
)
add_named_command(
    array,
    "cancel",
    ARRAY,
    "Cancel every job of the array; no more start.",
    lambda client, array_id: client.cancel_array(array_id),
    show_array,
)
