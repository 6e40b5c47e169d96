"""A job's small outputs: the ``outputs.json`` it writes into ``$TRAINYARD_OUTPUT_DIR``.

A flat JSON object of name -> string, number or true/false, at most :data:`OUTPUTS_MAX_BYTES`.
The executor reads it when an attempt succeeds (never following a link the job planted) and
reports it with the attempt's end; the scheduler keeps it on the job record (``outputs``) and the
``succeeded`` event carries it. A pipeline step refers to an earlier step's outputs as
``${{ steps.<step>.outputs.<name> }}`` (docs/workflows.md, "Step outputs").

The file is the job's: hostile until checked. :func:`parse_outputs` is the one check (pure): a
document that is not such an object is refused whole, with the reason, never half taken.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import StringConstraints

OUTPUTS_FILE = "outputs.json"
OUTPUTS_MAX_BYTES = 64 * 1024
MAX_OUTPUTS = 256
OUTPUT_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"

OutputName = Annotated[str, StringConstraints(pattern=OUTPUT_NAME_PATTERN)]
OutputValue = str | int | float | bool
StepOutputs = dict[OutputName, OutputValue]

_NAME = re.compile(OUTPUT_NAME_PATTERN)
STEP_OUTPUT_REF = re.compile(
    r"\$\{\{\s*steps\.([a-z0-9][a-z0-9_-]{0,62})\.outputs(?:\[(\d{1,7})\])?\.([A-Za-z_][A-Za-z0-9_]{0,63})\s*\}\}"
)
"""``${{ steps.<step>.outputs.<name> }}`` in a pipeline step's command, env or params; of an array
step, ``${{ steps.<step>.outputs[<index>].<name> }}`` for one index, or without the index every
index's value as a JSON list in index order. Groups: step, index (or None), name."""
_ANY_STEP_REF = re.compile(r"\$\{\{\s*steps\.")


@dataclass(frozen=True)
class OutputRef:
    """One reference: a step, the output's name, and for one index of an array step that index."""

    step: str
    name: str
    index: int | None = None


def output_ref(match: re.Match[str]) -> OutputRef:
    index = match.group(2)
    return OutputRef(match.group(1), match.group(3), int(index) if index is not None else None)


def output_refs(text: str) -> list[OutputRef]:
    """The references ``text`` holds; ValueError for a ``${{ steps.`` that is not one (a
    misspelt reference is an error, not text left as it is)."""
    refs = [output_ref(m) for m in STEP_OUTPUT_REF.finditer(text)]
    if len(_ANY_STEP_REF.findall(text)) != len(refs):
        raise ValueError(
            "a reference to a step's output reads ${{ steps.<step>.outputs.<name> }} "
            "(of one index of an array step: ${{ steps.<step>.outputs[<index>].<name> }})"
        )
    return refs


class OutputsError(ValueError):
    """``outputs.json`` is not a flat object of name -> string, number or true/false."""


def parse_outputs(data: bytes) -> dict[str, OutputValue]:
    """The outputs in ``data`` (an ``outputs.json``), or OutputsError saying what is wrong."""
    if len(data) > OUTPUTS_MAX_BYTES:
        raise OutputsError(f"{OUTPUTS_FILE} is over {OUTPUTS_MAX_BYTES} bytes")
    try:
        document = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise OutputsError(f"{OUTPUTS_FILE} is not JSON in UTF-8: {exc}") from None
    if not isinstance(document, dict):
        raise OutputsError(f"{OUTPUTS_FILE} must hold a JSON object of name: value")
    if len(document) > MAX_OUTPUTS:
        raise OutputsError(f"{OUTPUTS_FILE} has {len(document)} names, at most {MAX_OUTPUTS}")
    for name, value in document.items():
        if not _NAME.match(name):
            raise OutputsError(f"{OUTPUTS_FILE}: name {name[:80]!r} must match {OUTPUT_NAME_PATTERN}")
        if isinstance(value, float) and not math.isfinite(value):
            raise OutputsError(f"{OUTPUTS_FILE}: {name} is not a finite number")
        if not isinstance(value, str | int | float | bool):
            raise OutputsError(f"{OUTPUTS_FILE}: {name} must be a string, number or true/false")
        if isinstance(value, str) and "\x00" in value:
            raise OutputsError(f"{OUTPUTS_FILE}: {name} holds a NUL character")
    return document


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


__all__ = [
    "MAX_OUTPUTS",
    "OUTPUTS_FILE",
    "OUTPUTS_MAX_BYTES",
    "OUTPUT_NAME_PATTERN",
    "STEP_OUTPUT_REF",
    "OutputName",
    "OutputRef",
    "OutputValue",
    "OutputsError",
    "StepOutputs",
    "output_ref",
    "output_refs",
    "parse_outputs",
]
