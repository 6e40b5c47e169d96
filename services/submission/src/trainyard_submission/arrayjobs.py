"""``array:`` on a job spec, as ``POST /v1/jobs`` reads it (Slurm's ``--array=0-99%8``).

A spec with ``array`` is not a job: it asks the workflow service for one array object (a one-step
pipeline run whose step is the array, docs/workflows.md "Job arrays"), and the workflow service
submits every child job. ``array_task`` (which child a job is) is the workflow service's to set:
a caller giving it is refused, so ``TRAINYARD_ARRAY_INDEX`` always means what Trainyard says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainyard_contracts import FieldError, SpecError
from trainyard_contracts.arrays import ArraySyntaxError, parse_array
from trainyard_contracts.arrayview import ARRAY_STEP
from trainyard_contracts.spec import parse_spec_document, validate_spec

ARRAY_FIELD = "array"
ARRAY_TASK_FIELD = "array_task"


@dataclass(frozen=True)
class ArrayRequest:
    """An array asked for: its Slurm syntax and the job spec document of every child."""

    array: str
    job: dict[str, Any]

    def pipeline(self) -> dict[str, Any]:
        """The one-step pipeline document that is this array."""
        name = self.job.get("name") if isinstance(self.job.get("name"), str) else ARRAY_STEP
        return {"name": name, "steps": [{"name": ARRAY_STEP, "array": self.array, "job": self.job}]}


def array_request(body: str | bytes) -> ArrayRequest | None:
    """The array ``body`` asks for, None for a plain job; SpecError names ``array`` (bad syntax)
    or ``array_task`` (set by a caller)."""
    document = parse_spec_document(body)
    if ARRAY_TASK_FIELD in document:
        raise SpecError(
            [
                FieldError(
                    field=ARRAY_TASK_FIELD,
                    message="is set by Trainyard on each job of an array; "
                    'to run an array give array: "0-99%8" (Slurm syntax) instead',
                )
            ]
        )
    if ARRAY_FIELD not in document:
        return None
    text = document[ARRAY_FIELD]
    try:
        parse_array(text)
    except (ArraySyntaxError, TypeError) as exc:
        expected = 'expected Slurm array syntax such as "0-99%8", "0-31:4" or "1,3,5-7"'
        message = str(exc) if isinstance(exc, ArraySyntaxError) else expected
        raise SpecError([FieldError(field=ARRAY_FIELD, message=message)]) from None
    job = {k: v for k, v in document.items() if k != ARRAY_FIELD}
    validate_spec(job)  # each child's errors named as for one job (command, not steps.0.job.command)
    return ArrayRequest(text, job)
