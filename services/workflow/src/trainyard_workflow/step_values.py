"""Filling a step's job with the small outputs of the steps it depends on (pure, no I/O).

``${{ steps.<s>.outputs.<n> }}`` is the value step ``s`` reported; of an array step,
``${{ steps.<s>.outputs[<i>].<n> }}`` is index ``i``'s and ``${{ steps.<s>.outputs.<n> }}`` is
every index's value as one JSON list in index order (Argo's aggregated outputs of a fan-out, KFP's
``dsl.Collected``). The references were checked when the pipeline was read
(``trainyard_contracts.workflow``); what is checked here is what only the jobs' records know: a
value not reported, and a job spec grown over the limit by the values filled in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import cast

from trainyard_contracts import JobSpec
from trainyard_contracts.spec import ParamValue
from trainyard_contracts.specsize import spec_size_error
from trainyard_contracts.stepoutputs import STEP_OUTPUT_REF, OutputRef, OutputValue, output_ref
from trainyard_contracts.workflow import StepSpec, step_output_refs

Reported = Mapping[str, OutputValue] | None
"""What one job reported (None: no outputs.json, or one refused)."""
StepValues = Reported | Mapping[int, Reported]
"""Per step: its job's outputs, or an array step's per index."""


class OutputMissing(Exception):
    """A step refers to an output its dependency did not report, or the values make its job too
    big: the step fails, not submitted."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")


def referenced_steps(spec: StepSpec) -> set[str]:
    """The steps whose outputs ``spec`` uses (checked when the pipeline was read)."""
    if spec.job is None:
        return set()
    return {ref.step for refs in step_output_refs(spec.job).values() for ref in refs}


def with_outputs(
    job: JobSpec, outputs: Mapping[str, StepValues], arrays: frozenset[str] = frozenset()
) -> JobSpec:
    """``job`` with every reference replaced by the value its step reported (``outputs``: per
    step, its job's outputs; per index for the steps named in ``arrays``). Literal text, never
    read by a shell (a shell step may use them in env only); a params value that is exactly one
    reference to one value takes the value's type, a list is its JSON text. OutputMissing names
    the field of a value not there, or says the filled spec is over the limit."""
    if not step_output_refs(job):
        return job

    def value(match: re.Match[str], where: str) -> OutputValue:
        ref = output_ref(match)
        got = outputs.get(ref.step)
        if ref.step not in arrays:
            return _one(ref, None, cast(Reported, got), where)
        per_index = cast(Mapping[int, Reported], got or {})
        if ref.index is None:
            return _listed([_one(ref, i, per_index[i], where) for i in sorted(per_index)])
        return _one(ref, ref.index, per_index.get(ref.index), where)

    def text(template: str, where: str) -> str:
        return STEP_OUTPUT_REF.sub(lambda m: _as_text(value(m, where)), template)

    def typed(template: ParamValue, where: str) -> ParamValue:
        if not isinstance(template, str):
            return template
        whole = STEP_OUTPUT_REF.fullmatch(template.strip())
        return value(whole, where) if whole else text(template, where)

    filled = job.model_copy(
        update={
            "command": [text(arg, f"command.{i}") for i, arg in enumerate(job.command)],
            "env": {name: text(v, f"env.{name}") for name, v in job.env.items()},
            "params": {name: typed(v, f"params.{name}") for name, v in job.params.items()},
        }
    )
    too_big = spec_size_error(filled)
    if too_big is not None:
        raise OutputMissing(too_big.field, "with the outputs filled in, " + too_big.message)
    return filled


def _one(ref: OutputRef, index: int | None, reported: Reported, where: str) -> OutputValue:
    who = f"step {ref.step!r}" if index is None else f"step {ref.step!r} index {index}"
    if reported is None:
        raise OutputMissing(
            where, f"{who} reported no outputs (no outputs.json, or one refused: see its log)"
        )
    if ref.name not in reported:
        known = ", ".join(sorted(reported)) or "none"
        raise OutputMissing(where, f"{who} reported no output {ref.name!r} (it reported: {known})")
    return reported[ref.name]


def _listed(values: list[OutputValue]) -> str:
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False)


def _as_text(value: OutputValue) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)
