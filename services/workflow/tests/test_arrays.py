"""Job arrays through the real services (nats-server, submission, scheduler, local executor,
workflow): each child job sees its own index and the array's size."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.service, pytest.mark.workflow, pytest.mark.local]

PRINT_INDEX = [
    "python3",
    "-c",
    "import os; e = os.environ; print('index', e['TRAINYARD_ARRAY_INDEX'], 'of', e['TRAINYARD_ARRAY_COUNT'])",
]


async def test_each_job_of_an_array_step_sees_its_index_and_the_count(workflow_stack, bus):
    pipeline = {
        "name": "sweep",
        "steps": [{"name": "fit", "array": "0-2", "job": {"name": "fit", "command": PRINT_INDEX}}],
    }
    async with workflow_stack() as client:
        started = await client.ask("run", pipeline=pipeline)
        run = await client.ended(started.run.run_id)
        assert run.state.value == "succeeded", run.steps["fit"].reason
        jobs = run.steps["fit"].jobs
        assert sorted(jobs) == [0, 1, 2]
        for index, child in jobs.items():
            assert f"index {index} of 3" in await bus.log_text(child.job_id)
            record = await bus.record(child.job_id)
            assert record.spec.array_task is not None and record.spec.array_task.index == index


async def test_a_caller_cannot_set_which_job_of_an_array_a_job_is(workflow_stack):
    spec = {"name": "fake", "command": ["true"], "array_task": {"index": 1, "count": 2}}
    async with workflow_stack() as client:
        response = await client.http.post("/v1/jobs", json=spec)
        assert response.status_code == 422, response.text
        assert [e["field"] for e in response.json()["errors"]] == ["array_task"]
