"""After a restart an executor's own attempts are adopted or ended before any of them is requeued
elsewhere: an executor without a lease is known dead only once it has stayed away
``lost_grace_seconds`` (docs/scheduling.md, "Known dead"). The scheduler runs in this process, the
executor is a real ``python -m trainyard_executor`` process killed with SIGKILL (its job, in its own
session, outlives it, as after a Ctrl-C that reached the executor first), on a real nats-server."""

from __future__ import annotations

from datetime import timedelta

import pytest

from trainyard_contracts import ExecutorHeartbeat, JobSpec, JobState
from trainyard_scheduler.app import create_app as scheduler_app
from trainyard_scheduler.settings import SchedulerSettings

from .harness import Bus, eventually, running
from .test_executor_restart import JOB, PY, _alive, _ready, executors, heartbeat_lists, starts

pytestmark = [pytest.mark.service, pytest.mark.local]
__all__ = ["executors"]  # the fixture, shared with test_executor_restart


async def stored_beat(bus: Bus) -> ExecutorHeartbeat:
    kv = await bus.js.key_value(bus.subjects.buckets.executors)
    return ExecutorHeartbeat.model_validate_json((await kv.get("exec-restart")).value)


async def test_an_executor_back_after_its_lease_expired_keeps_its_attempt(common, bus, executors, tmp_path):
    """The executor's lease (2 s) runs out while it is down and the leader reconciles several
    times after that: the attempt used to be requeued at once, and the restarted executor then
    stopped the first process and the job ran a second time. Now it stays with its executor, which
    comes back, adopts it, and the job runs once."""
    marker, go = tmp_path / "marker", tmp_path / "go"
    marker.write_text("")
    executor = executors(lease=2)
    settings = SchedulerSettings(tick_seconds=0.2, submitted_grace_seconds=1, lost_grace_seconds=300)
    scheduler = scheduler_app(common, settings)
    async with running(scheduler):
        executor.start()
        job_id = await bus.submit(JobSpec(name="comes-back", command=[PY, "-c", JOB, str(marker), str(go)]))
        await bus.wait_state(job_id, "running", timeout=120)
        await eventually(lambda: _ready(len(starts(marker)) == 1), 60, "the job started")
        executor.kill()
        [[_, pid]] = starts(marker)
        beat = await stored_beat(bus)
        expired_at = beat.time + timedelta(seconds=beat.lease_seconds)
        core = scheduler.context.get("runtime").get().core

        async def reconciled_after_expiry():  # a reconcile runs at least every 5 ticks (1 s)
            return core.decided_at is not None and core.decided_at > expired_at + timedelta(seconds=3)

        await eventually(reconciled_after_expiry, 60, "planning passes well after the lease expired")
        record = await bus.record(job_id)
        assert record.state == JobState.RUNNING and record.attempt == 1, (record.state, record.reason)
        assert _alive(int(pid))

        executor.start()
        await eventually(lambda: heartbeat_lists(bus, job_id), 120, "the attempt adopted")
        go.write_text("")
        done = await bus.wait_state(job_id, "succeeded", "failed", "requeued", timeout=120)
        events = await bus.event_types(job_id)
    assert done.state == JobState.SUCCEEDED and done.attempt == 1, (done.state, done.reason)
    assert starts(marker) == [["1", pid]]  # its process started once
    assert events.count("running") == 1 and "requeued" not in events
