"""A real local job calls ``trainyard.report``: its points reach the metrics stream, batched."""

from __future__ import annotations

import pytest

from trainyard_contracts import JobSpec, MetricsBatch
from trainyard_scheduler.testkit import quick_scheduler
from trainyard_shared.testing.helpers import eventually, running

from .jobs import PY, batches, executor, points

pytestmark = [pytest.mark.insight, pytest.mark.service, pytest.mark.local]


async def test_reports_arrive_on_the_metrics_stream_in_order_while_the_job_runs(common, bus):
    # the job reports 5 steps, then waits for a file the test makes once it has seen them: so the
    # points are shown to arrive while the job still runs, not only at its end
    code = (
        "import os, time, trainyard\n"
        "for step in range(5):\n"
        "    trainyard.report(step, loss=1.0 / (step + 1), acc=step / 10)\n"
        "go = os.path.join(os.environ['TRAINYARD_WORKDIR'], 'go')\n"
        "deadline = time.time() + 60\n"
        "while not os.path.exists(go) and time.time() < deadline:\n"
        "    time.sleep(0.05)\n"
        "trainyard.report(5, loss=0.125)\n"
    )
    async with running(quick_scheduler(common)), running(executor(common)):
        job_id = await bus.submit(JobSpec(name="reporter", command=[PY, "-c", code]))
        await bus.wait_state(job_id, "running")

        async def five() -> list | None:
            found = await points(bus, job_id)
            return found if len(found) >= 5 else None

        seen = await eventually(five, 30, "five points on the stream")
        assert (await bus.record(job_id)).state.value == "running"  # type: ignore[union-attr]
        (common.resolved_data_dir() / "executor" / "exec-m" / "work" / job_id / "attempt-1" / "go").touch()
        await bus.wait_state(job_id, "succeeded")
        found = await points(bus, job_id)
    assert [p["step"] for p in found] == [0, 1, 2, 3, 4, 5]
    assert seen[0]["values"] == {"loss": 1.0, "acc": 0.0}
    assert found[4]["values"] == {"loss": 0.2, "acc": 0.4}
    assert found[5]["values"] == {"loss": 0.125}
    for batch in await batches(bus, job_id):
        MetricsBatch.model_validate(batch)  # what any consumer reads parses as the contract
        assert batch["job_id"] == job_id and batch["attempt"] == 1


async def test_a_thousand_reports_are_a_handful_of_messages(common, bus):
    code = (
        "import trainyard\n"
        "for step in range(1000):\n"
        "    trainyard.report(step, loss=1.0 / (step + 1), lr=0.001)\n"
    )
    async with running(quick_scheduler(common)), running(executor(common)):
        job_id = await bus.submit(JobSpec(name="many", command=[PY, "-c", code]))
        await bus.wait_state(job_id, "succeeded")
        stored = await batches(bus, job_id)
    steps = [p["step"] for b in stored for p in b["points"]]
    assert steps == list(range(1000))
    assert 1 <= len(stored) <= 10, len(stored)
