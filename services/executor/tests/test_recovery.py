"""What a restarted executor does with the records that name it, against a real nats-server.

An attempt the scheduler placed here that never started (no process, no container: the record is
still ``scheduled``) is not lost: its start command is still to come (unacked, or sent after the
new process's first heartbeat, which makes it placeable again). Requeueing it made the job run as
attempt 3 where the scheduler had started attempt 2 (the podman flake of session 6). An attempt the
record says runs here but which nothing on the backend runs is lost, and requeued.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trainyard_contracts import JobRecord, JobSpec, JobState, lifecycle, new_job_id
from trainyard_contracts._time import utcnow
from trainyard_executor.backends.base import Resources
from trainyard_executor.backends.noop import NoopBackend
from trainyard_executor.core import ExecutorCore
from trainyard_executor.fakes import AppliedAtOnce
from trainyard_executor.outcomes import not_started_here
from trainyard_executor.settings import ExecutorSettings
from trainyard_shared.binding import connect_and_bind
from trainyard_shared.broker import make_broker
from trainyard_shared.executors import ExecutorDirectory
from trainyard_shared.jobstore import JobStore
from trainyard_shared.publishing import EventPublisher
from trainyard_shared.settings import CommonSettings
from trainyard_shared.testing.helpers import Bus

ME = "exec-a"
NOW = utcnow()


def placed_here(job_id: str, *, started: bool) -> JobRecord:
    spec = JobSpec(name="placed", command=["true"])
    record = lifecycle.advance(lifecycle.new_record(job_id, spec, NOW, None), JobState.QUEUED, NOW)
    scheduled = lifecycle.schedule(record, ME, NOW)
    return lifecycle.start(scheduled, NOW) if started else scheduled


@pytest.mark.unit
def test_only_a_scheduled_attempt_counts_as_not_started_here() -> None:
    assert not_started_here(placed_here("j1", started=False), None)
    assert not not_started_here(placed_here("j1", started=True), None)


@pytest.mark.service
async def test_a_restart_requeues_a_lost_running_attempt_and_leaves_a_placed_one_to_its_command(
    nats_server, prefix, tmp_path: Path
) -> None:
    placed = placed_here(new_job_id(), started=False)
    lost = placed_here(new_job_id(), started=True)
    common = CommonSettings(nats_url=nats_server.url, prefix=prefix, data_dir=tmp_path)
    sb = make_broker(common, "executor")
    buckets = await connect_and_bind(sb, common)
    try:
        for record in (placed, lost):
            await buckets.jobs.create(record.job_id, record.model_dump_json().encode())
        store = JobStore(buckets.jobs)
        core = ExecutorCore(
            store=store,
            # the scheduler's rule applies each report at once (no scheduler process here)
            reports=AppliedAtOnce(store, EventPublisher(sb.broker, sb.subjects)),
            directory=ExecutorDirectory(buckets.executors),
            backend=NoopBackend(Resources(cpu=4, memory_mb=1024, gpu=0)),
            shippers=lambda job_id, attempt: None,  # type: ignore[arg-type,return-value]  # recover ships none
            settings=ExecutorSettings(id=ME, backend="noop"),
            work_root=tmp_path / "work",
        )
        assert await core.recover([placed, lost]) == 1
        async with Bus(nats_server.url, prefix) as bus:
            placed_now = await bus.record(placed.job_id)
            lost_now = await bus.record(lost.job_id)
    finally:
        await sb.broker.stop()
    assert placed_now is not None and (placed_now.state, placed_now.attempt) == (JobState.SCHEDULED, 1)
    assert lost_now is not None and (lost_now.state, lost_now.attempt) == (JobState.REQUEUED, 2)
