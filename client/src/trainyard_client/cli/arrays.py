"""Job arrays: ``trainyard submit`` of a spec with ``array:``, ``trainyard array status|cancel ID``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from trainyard_client import cli
from trainyard_client.cli.base import api_errors, settings, styled
from trainyard_client.cli.output import Output, OutputOption, print_data

array = typer.Typer(help="Job arrays: one spec, N jobs (docs/workflows.md).", no_args_is_help=True)
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
    if fmt in (Output.JSON, Output.YAML):
        print_data({"kind": "array", **status.model_dump(mode="json")}, fmt)
        return
    if fmt == Output.NAME:
        cli.out.print(status.array_id)
        return
    counts = ", ".join(f"{n} {state}" for state, n in status.counts.items() if n)
    cli.out.print(
        f"array [bold]{status.array_id}[/] {status.name} [{status.array}] {styled(status.state.value)}: "
        f"{status.count} jobs ({counts})"
    )
    if status.reason:
        cli.out.print(f"  {status.reason}")


@array.command("status")
def status(ctx: typer.Context, array_id: Annotated[str, ARRAY], output: OutputOption = Output.TABLE) -> None:
    """An array's jobs counted per state."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        show_array(client.array(array_id), output)


@array.command("cancel")
def cancel(ctx: typer.Context, array_id: Annotated[str, ARRAY], output: OutputOption = Output.TABLE) -> None:
    """Cancel every job of the array; no more start."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        show_array(client.cancel_array(array_id), output)
