"""Telemetry's start-up read of a long history, against a real nats-server: every job's facts
are taken, and the view holds no finished record (it held every one before, ~8.5 KB each)."""

from __future__ import annotations

import pytest

from trainyard_contracts import JobSpec, JobState, lifecycle, new_job_id
from trainyard_contracts._time import utcnow
from trainyard_shared.jobstore import JobStore
from trainyard_shared.testing.helpers import Bus
from trainyard_telemetry.app import job_states_view
from trainyard_telemetry.jobstates import JobStates

pytestmark = pytest.mark.service


@pytest.fixture
async def jobs(nats_server, prefix):
    async with Bus(nats_server.url, prefix) as bus:
        yield await bus.js.create_key_value(bucket=f"{prefix}_telemetryread", history=5)


async def test_every_jobs_facts_are_taken_and_no_finished_record_is_kept(jobs):
    store = JobStore(jobs, remember=0)
    now = utcnow()
    fresh = [
        lifecycle.new_record(new_job_id(), JobSpec(name="h", command=["true"]), now, None) for _ in range(41)
    ]
    finished = [lifecycle.finish(r, JobState.CANCELLED, now, exit_code=None, reason="t") for r in fresh[:40]]
    for record in [*finished, fresh[40]]:
        await store.create(record)
    states = JobStates()
    view = job_states_view(jobs, states)
    await view.start()
    try:
        assert set(view.records) == {fresh[40].job_id}
        by_state, _ = states.tally()
        assert by_state == {"cancelled": 40, "submitted": 1}
    finally:
        await view.stop()
