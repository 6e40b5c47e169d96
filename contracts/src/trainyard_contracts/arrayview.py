"""A job array as its users see it: one object, its children counted per state.

An array submitted on its own (``array:`` on a job spec) is a one-step pipeline run whose step,
named ``array``, is the array (docs/workflows.md, "Job arrays"); :func:`array_status` is that run
as counts, never as a list of up to 10,000 jobs.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from trainyard_contracts.runs import PipelineRun, RunState

ARRAY_STEP = "array"


class ArrayStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    array_id: str = Field(description="the array's id (its pipeline run's id)")
    name: str
    array: str = Field(description="its Slurm syntax, as submitted")
    state: RunState
    count: int = Field(description="how many jobs the array has")
    counts: dict[str, int] = Field(
        description="jobs per state: not_started (not submitted yet), submitted (queued or running), "
        "then how each ended: succeeded, failed, timed_out, cancelled, rejected (refused at intake)"
    )
    reason: str | None = None
    submitted_by: str | None = None
    created: datetime
    ended: datetime | None = None


def is_array_run(run: PipelineRun) -> bool:
    """Whether ``run`` is an array submitted on its own (not a pipeline with an array step)."""
    steps = run.spec.steps
    return len(steps) == 1 and steps[0].name == ARRAY_STEP and steps[0].array is not None


def array_status(run: PipelineRun, counts: dict[str, int] | None = None) -> ArrayStatus:
    """The array ``run`` is; ``counts``: the step's, when ``run`` was trimmed to fit a reply."""
    spec = run.spec.steps[0]
    counts = counts if counts is not None else run.job_counts()[spec.name]
    return ArrayStatus(
        array_id=run.run_id,
        name=run.spec.name,
        array=spec.array or "",
        state=run.state,
        count=sum(counts.values()),
        counts=counts,
        reason=run.steps[spec.name].reason,
        submitted_by=run.submitted_by,
        created=run.created,
        ended=run.ended,
    )
