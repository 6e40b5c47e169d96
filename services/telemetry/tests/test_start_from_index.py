"""Telemetry's start from the jobs index, against a real nats-server: the live jobs' facts are
read, the finished jobs are counted by state from the index (their records are not read), and the
jobs-by-state figures are those a read of every record gives."""

from __future__ import annotations

import pytest

from trainyard_contracts import JobSpec, JobState, lifecycle, new_job_id
from trainyard_contracts._time import utcnow
from trainyard_telemetry.app import start_from_index
from trainyard_telemetry.jobstates import JobStates

pytestmark = pytest.mark.service


async def test_live_facts_and_finished_counts_give_the_figures_of_every_record(indexed_jobs):
    index, store = indexed_jobs
    now = utcnow()
    spec = JobSpec(name="h", queue="gpu", command=["true"])
    fresh = [lifecycle.new_record(new_job_id(), spec, now, None) for _ in range(13)]
    records = [lifecycle.finish(r, JobState.CANCELLED, now, exit_code=None, reason="t") for r in fresh[:6]]
    records += [r.model_copy(update={"state": JobState.FAILED}) for r in fresh[6:10]]
    records += [lifecycle.advance(r, JobState.QUEUED, now) for r in fresh[10:]]
    for record in records:
        await store.create(record)
    states = JobStates()
    assert not await start_from_index(store.kv, index, states)  # no built index: the caller reads all

    await index.js.publish(index.built_marker, b"", stream=index.stream)
    assert await start_from_index(store.kv, index, states)
    assert set(states.jobs) == {r.job_id for r in records[10:]}  # finished ones: counted, not held
    expected = JobStates()
    expected.seed(records)
    assert states.tally() == expected.tally()
