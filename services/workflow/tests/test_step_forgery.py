"""A job is a pipeline step only when the workflow service's own intake subject took it under the
step's key: labels are anyone's to write, and any other sender may publish the step's key on the
general intake subject. The window a forged job could use is a step whose submission is recorded and
not answered yet (the intake slow, or its answer lost with a restart): the step's job id is not
known, so the first outcome labelled as that step would otherwise be taken as its job's."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from trainyard_contracts import JobRecord, JobSpec
from trainyard_contracts.ids import WORKFLOW_INTAKE, idempotency_slot
from trainyard_contracts.lifecycle import new_record
from trainyard_contracts.runs import PipelineRun
from trainyard_contracts.workflow import RUN_LABEL, STEP_LABEL, validate_pipeline
from trainyard_workflow.core import ATTEMPT_LABEL, INDEX_LABEL, advance, idempotency_key
from trainyard_workflow.service import WorkflowService

pytestmark = [pytest.mark.unit, pytest.mark.workflow, pytest.mark.security]
RUN = "run-forged-1"


class MemoryRuns:
    """The run store's compare-and-set, in memory (one caller at a time: the service's turns)."""

    def __init__(self, run: PipelineRun) -> None:
        self.run = run

    async def get(self, run_id: str) -> tuple[PipelineRun, int] | None:
        return (self.run, 1) if run_id == self.run.run_id else None

    async def exists(self, run_id: str) -> bool:
        return run_id == self.run.run_id

    async def mutate(self, run_id: str, change: Any, before_write: Any = None) -> tuple[PipelineRun, Any]:
        changed, result = change(self.run)
        if before_write is not None:
            await before_write(changed, result)
        self.run = changed
        return self.run, result


class SilentIntake:
    """An intake that has not answered (yet): every submission times out."""

    async def submit(self, spec: JobSpec, key: str) -> Any:
        raise TimeoutError(key)


async def _noop(*_: Any) -> None:
    return None


def labelled(job_id: str, step: str, index: int, slot: str | None) -> JobRecord:
    labels = {RUN_LABEL: RUN, STEP_LABEL: step, INDEX_LABEL: str(index), ATTEMPT_LABEL: "1"}
    spec = JobSpec(name="forged", command=["true"], labels=labels)
    record = new_record(job_id, spec, datetime(2026, 12, 3, tzinfo=UTC), "b")
    return record.model_copy(update={"idempotency_slot": slot})


@pytest.mark.parametrize("step,index", [("one", 0), ("many", 1)])
async def test_a_job_labelled_as_a_step_is_no_step_until_the_intake_took_it_under_the_key(step, index):
    spec = validate_pipeline(
        {
            "name": "p",
            "steps": [
                {"name": "one", "job": {"name": "one", "command": ["true"]}},
                {"name": "many", "array": "0-1", "job": {"name": "many", "command": ["true"]}},
            ],
        }
    )
    run, _ = advance(PipelineRun.start(RUN, spec))  # every submission recorded, none answered
    runs = MemoryRuns(run)
    workflow = WorkflowService(runs, read_job=_noop, intake=SilentIntake(), emit=_noop)  # type: ignore[arg-type]
    key = idempotency_key(RUN, step, index, 1)
    for forged in (
        labelled("job-http", step, index, idempotency_slot("http.tok", key)),  # over HTTP, the step's key
        labelled("job-nokey", step, index, None),
        # the general bus intake, the step's key: an anonymous sender's, and a token's
        labelled("job-bus", step, index, idempotency_slot("intake", key)),
        labelled("job-bus-token", step, index, idempotency_slot("intake.tok", key)),
        labelled(
            "job-other", step, index, idempotency_slot(WORKFLOW_INTAKE, idempotency_key(RUN, step, index, 2))
        ),
    ):
        await workflow.on_job_ended(forged.job_id, "succeeded", forged)
        job = runs.run.steps[step].jobs[index]
        assert (job.job_id, job.outcome) == (None, None), forged.job_id
        assert runs.run.steps[step].state.value == "running"
    own = labelled("job-own", step, index, idempotency_slot(WORKFLOW_INTAKE, key))
    await workflow.on_job_ended(own.job_id, "succeeded", own)
    job = runs.run.steps[step].jobs[index]
    assert (job.job_id, job.outcome) == ("job-own", "succeeded")
