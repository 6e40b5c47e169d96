"""Telemetry's start-up read of a long history, against a real nats-server: every job's facts are
taken from the part of its record telemetry keeps (``RecordFacts``), the same facts the whole
record gives, and nothing else of the record is held (a view of whole records held every one
before, ~8.5 KB each)."""

from __future__ import annotations

import pytest

from trainyard_contracts import JobSpec, JobState, lifecycle, new_job_id
from trainyard_contracts._time import utcnow
from trainyard_contracts.spec import Resources
from trainyard_shared.jobstore import JobStore
from trainyard_shared.testing.helpers import Bus
from trainyard_telemetry.app import job_states_watch
from trainyard_telemetry.jobstates import JobStates

pytestmark = pytest.mark.service


@pytest.fixture
async def jobs(nats_server, prefix):
    async with Bus(nats_server.url, prefix) as bus:
        yield await bus.js.create_key_value(bucket=f"{prefix}_telemetryread", history=5)


SPECS = [
    JobSpec(name="h", command=["true"]),
    JobSpec(name="q", queue="gpu", command=["true"], resources=Resources(cpu=2.5, memory="4Gi", gpu=1)),
    JobSpec(name="g", queue="team-a", command=["true"], replicas=3),
]


async def test_every_jobs_facts_are_those_of_its_whole_record(jobs):
    store = JobStore(jobs, remember=0)
    now = utcnow()
    fresh = [lifecycle.new_record(new_job_id(), SPECS[i % 3], now, None) for i in range(41)]
    records = [lifecycle.finish(r, JobState.CANCELLED, now, exit_code=None, reason="t") for r in fresh[:40]]
    records.append(lifecycle.advance(fresh[40], JobState.QUEUED, now))
    for record in records:
        await store.create(record)
    states, expected = JobStates(), JobStates()
    expected.seed(records)
    watch = job_states_watch(jobs, states)
    await watch.start()
    try:
        assert states.jobs == expected.jobs
        by_state, depth = states.tally()
        assert by_state == {"cancelled": 40, "queued": 1} and depth[records[40].spec.queue] == 1
        assert {(f.queue, f.cpu, f.memory_bytes, f.gang) for f in states.jobs.values()} == {
            ("default", 1.0, 512 * 1024 * 1024, False),
            ("gpu", 2.5, 4096 * 1024 * 1024, False),
            ("team-a", 3.0, 3 * 512 * 1024 * 1024, True),
        }
    finally:
        await watch.stop()
