"""A start from the jobs index (liveread.py) against a real nats-server: a view holds the live jobs
and no finished one, follows every write made after the bucket's last sequence it read (one made
between the read and the watch too), and an installation without a built index reads the whole
bucket as before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from trainyard_contracts import JobRecord, JobSpec, JobState, lifecycle
from trainyard_shared.jobview import JobView
from trainyard_shared.liveread import read_live
from trainyard_shared.testing.helpers import eventually

pytestmark = pytest.mark.service

BASE = datetime(2026, 1, 1, tzinfo=UTC)


def record(i: int, state: JobState) -> JobRecord:
    spec = JobSpec(name=f"job-{i}", command=["true"])
    fresh = lifecycle.new_record(f"live{i:06d}", spec, BASE + timedelta(seconds=i), "test")
    return fresh.model_copy(update={"state": state})


async def test_a_view_started_from_the_index_holds_the_live_jobs_and_follows_what_comes_after(indexed_jobs):
    index, store = indexed_jobs
    finished = [record(i, JobState.SUCCEEDED if i % 2 else JobState.FAILED) for i in range(30)]
    live = [record(100 + i, JobState.QUEUED) for i in range(5)]
    for r in [*finished[:15], *live, *finished[15:]]:
        await store.create(r)
    await index.js.publish(index.built_marker, b"", stream=index.stream)

    read = await read_live(store.kv, index)
    assert read is not None
    assert sorted(e.key for e in read.entries) == [r.job_id for r in live]
    # written after the read, before the watch starts: the watch goes on from the read's sequence
    await store.update(live[0].job_id, lambda r: lifecycle.advance(r, JobState.CANCELLED, BASE))
    view = JobView(store.kv, keep_finished=100)

    async def gone(job_id: str) -> bool:
        return job_id not in view.live

    async def present(job_id: str) -> bool:
        return job_id in view.live

    await view.start(live=read)
    try:
        assert not any(r.state.terminal and r.job_id != live[0].job_id for r in view.all())
        await eventually(lambda: gone(live[0].job_id), 10, "the cancel seen")
        assert sorted(view.live) == [r.job_id for r in live[1:]]

        arrived = record(200, JobState.SUBMITTED)
        await store.create(arrived)
        await store.update(live[1].job_id, lambda r: lifecycle.advance(r, JobState.CANCELLED, BASE))
        await eventually(lambda: present(arrived.job_id), 10, "a new job seen")
        await eventually(lambda: gone(live[1].job_id), 10, "a job that ended seen")
        last = (await store.kv.status()).stream_info.state.last_seq
        assert view.newest_revision == last  # a catch-up to the bucket's end does not wait for old ones
        assert view.get(finished[0].job_id) is None  # never read: callers read the bucket
    finally:
        await view.stop()


async def test_without_a_built_index_the_start_reads_the_whole_bucket(indexed_jobs):
    index, store = indexed_jobs
    done = record(1, JobState.SUCCEEDED)
    await store.create(done)
    assert await read_live(store.kv, index) is None
    view = JobView(store.kv, keep_finished=10)
    await view.start(live=await read_live(store.kv, index))
    try:
        assert view.get(done.job_id) is not None  # the whole bucket, as before the index
    finally:
        await view.stop()
