"""The no-op backend (benchmarks, dry installs): every attempt succeeds at once without a process,
through the real scheduler and executor services on a real nats-server."""

from __future__ import annotations

import pytest

from trainyard_contracts import JobSpec
from trainyard_executor.app import create_app as executor_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_scheduler.app import create_app as scheduler_app
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_shared.settings import CommonSettings

pytestmark = pytest.mark.service


async def test_a_job_succeeds_on_the_noop_backend_without_running_anything(nats_server, prefix, tmp_path):
    from trainyard_shared.testing import helpers as harness

    common = CommonSettings(nats_url=nats_server.url, prefix=prefix, data_dir=tmp_path, log_format="text")
    marker = tmp_path / "ran"
    scheduler = scheduler_app(common, SchedulerSettings(tick_seconds=0.2))
    executor = executor_app(common, ExecutorSettings(id="exec-noop", backend="noop", cpu=8, memory=1024))
    async with (
        harness.Bus(nats_server.url, prefix) as bus,
        harness.running(scheduler),
        harness.running(executor),
    ):
        job_id = await bus.submit(JobSpec(name="noop", command=["touch", str(marker)]))
        record = await bus.wait_state(job_id, "succeeded", "failed")
    assert record.state.value == "succeeded" and record.exit_code == 0
    assert "noop backend" in (record.reason or record.attempts[-1].reason or "")
    assert not marker.exists()  # nothing was run
