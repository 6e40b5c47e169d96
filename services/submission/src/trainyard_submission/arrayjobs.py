"""``array:`` on a job spec, as ``POST /v1/jobs`` reads it (Slurm's ``--array=0-99%8``).

A spec with ``array`` is not a job: it asks the workflow service for one array object (a one-step
pipeline run whose step is the array, docs/workflows.md "Job arrays"), and the workflow service
submits every child job. ``array_task`` (which child a job is) is the workflow service's to set:
a caller giving it is refused, so ``TRAINYARD_ARRAY_INDEX`` always means what Trainyard says.
So are ``inputs`` and ``pass_outputs`` (a pipeline step's upstream outputs folders, and whether
its own are packed): a caller naming a digest would read a folder that is not its run's.
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
WORKFLOW_ONLY_FIELDS = {
    ARRAY_TASK_FIELD: "is set by Trainyard on each job of an array; "
    'to run an array give array: "0-99%8" (Slurm syntax) instead',
    "inputs": "is set by Trainyard on a pipeline step (its dependencies' outputs folders, "
    "$TRAINYARD_INPUTS); run a pipeline to pass a folder from one job to the next",
    "pass_outputs": "is set by Trainyard on a pipeline step that later steps depend on",
}


def workflow_only_errors(document: object) -> list[FieldError]:
    """The fields of a job spec document only the workflow service sets, each as a field error."""
    if not isinstance(document, dict):
        return []
    return [
        FieldError(field=name, message=why) for name, why in WORKFLOW_ONLY_FIELDS.items() if name in document
    ]


def refuse_workflow_fields(body: str | bytes) -> None:
    """SpecError when a submission (not the workflow service's) sets a field only it may set. Most
    bodies name none: checked on the raw text first, parsed only when one may be there."""
    raw = body.encode() if isinstance(body, str) else body
    if not any(name.encode() in raw for name in WORKFLOW_ONLY_FIELDS):
        return
    try:
        errors = workflow_only_errors(parse_spec_document(body))
    except SpecError:
        return  # not a document: the submission's own parse says why
    if errors:
        raise SpecError(errors)


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
    or a field only the workflow service sets (``array_task``, ``inputs``, ``pass_outputs``)."""
    document = parse_spec_document(body)
    errors = workflow_only_errors(document)
    if errors:
        raise SpecError(errors)
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
