"""What a restarting executor reads of a long history, against a real nats-server: the jobs not
finished and the finished ones with an attempt still stopping here, nothing else (it held every
record of the bucket before, ~8.5 KB each). With a built jobs index, the live jobs are read from
it, and of the finished ones only those with an attempt stopping here that the backend still
holds; no other record of the history is read."""

from __future__ import annotations

import pytest

from trainyard_contracts import JobRecord, JobSpec, JobState, lifecycle, new_job_id
from trainyard_contracts._time import utcnow
from trainyard_executor.startupread import records_to_recover
from trainyard_shared.jobstore import JobStore
from trainyard_shared.testing.helpers import Bus

pytestmark = pytest.mark.service
ME = "exec-a"
SPEC = JobSpec(name="history", command=["true"])


@pytest.fixture
async def jobs(nats_server, prefix):
    async with Bus(nats_server.url, prefix) as bus:
        yield await bus.js.create_key_value(bucket=f"{prefix}_startupread", history=5)


def scheduled_on(executor_id: str) -> JobRecord:
    now = utcnow()
    queued = lifecycle.advance(lifecycle.new_record(new_job_id(), SPEC, now, None), JobState.QUEUED, now)
    return lifecycle.schedule(queued, executor_id, now)


def cancelled_on(executor_id: str, *, stopping: bool) -> JobRecord:
    ended = lifecycle.finish(
        scheduled_on(executor_id), JobState.CANCELLED, utcnow(), exit_code=None, reason="t"
    )
    attempts = [a.model_copy(update={"stopping": stopping}) for a in ended.attempts]
    return ended.model_copy(update={"attempts": attempts})


async def test_only_live_jobs_and_attempts_stopping_here_are_read(jobs):
    store = JobStore(jobs, remember=0)
    live = scheduled_on(ME)
    stopping_here = cancelled_on(ME, stopping=True)
    history = [cancelled_on(ME, stopping=False) for _ in range(40)]
    stopping_elsewhere = cancelled_on("exec-b", stopping=True)
    for record in [*history[:20], live, stopping_here, stopping_elsewhere, *history[20:]]:
        await store.create(record)
    read = await records_to_recover(jobs, ME)
    assert sorted(r.job_id for r in read) == sorted([live.job_id, stopping_here.job_id])
    assert next(r for r in read if r.job_id == stopping_here.job_id).attempts[0].stopping


# -- with a built jobs index: the live jobs, and of the finished ones only those the backend holds --


async def test_the_live_jobs_and_the_finished_ones_the_backend_holds_are_read(indexed_jobs):
    index, store = indexed_jobs
    live, elsewhere = scheduled_on(ME), scheduled_on("exec-b")
    on_backend = cancelled_on(ME, stopping=True)
    gone_from_backend = cancelled_on(ME, stopping=True)  # given up: its record keeps the mark
    history = [cancelled_on(ME, stopping=False) for _ in range(20)]
    for record in [*history, live, elsewhere, on_backend, gone_from_backend]:
        await store.create(record)
    await index.js.publish(index.built_marker, b"", stream=index.stream)

    read = await records_to_recover(
        store.kv, ME, index, on_backend=[on_backend.job_id, history[0].job_id, "unknown01"]
    )
    assert sorted(r.job_id for r in read) == sorted([live.job_id, elsewhere.job_id, on_backend.job_id])
    # without the index's marker: every record is peeked at, as before the index
    await index.js.purge_stream(index.stream, subject=index.built_marker)
    read = await records_to_recover(store.kv, ME, index)
    assert sorted(r.job_id for r in read) == sorted(
        [live.job_id, elsewhere.job_id, on_backend.job_id, gone_from_backend.job_id]
    )
