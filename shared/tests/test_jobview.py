"""The job view keeps the live jobs and only the most recently finished ones (``keep_finished``),
against a real nats-server: a long-lived installation's bucket holds every job it ever ran."""

from __future__ import annotations

import pytest

from trainyard_contracts import JobSpec, JobState, lifecycle
from trainyard_contracts._time import utcnow
from trainyard_contracts.ids import new_job_id
from trainyard_shared.jobstore import JobStore
from trainyard_shared.jobview import JobView, RecordPeek
from trainyard_shared.testing.helpers import Bus, eventually

pytestmark = pytest.mark.service
SPEC = JobSpec(name="v", command=["true"])


@pytest.fixture
async def jobs(nats_server, prefix):
    async with Bus(nats_server.url, prefix) as bus:
        yield await bus.js.create_key_value(bucket=f"{prefix}_viewtest", history=5)


async def new_job(store: JobStore) -> str:
    job_id = new_job_id()
    await store.create(lifecycle.new_record(job_id, SPEC, utcnow(), "t"))
    return job_id


async def finish(store: JobStore, job_id: str) -> None:
    now = utcnow()
    await store.update(
        job_id, lambda r: lifecycle.finish(r, JobState.CANCELLED, now, exit_code=None, reason="test")
    )


async def test_only_the_most_recently_finished_records_stay_in_memory(jobs):
    store = JobStore(jobs, remember=0)
    view = JobView(jobs, keep_finished=2)
    await view.start()
    try:
        ids = [await new_job(store) for _ in range(5)]
        for job_id in ids[:4]:
            await finish(store, job_id)
        last = (await jobs.status()).stream_info.state.last_seq

        async def caught_up():
            return view.newest_revision >= last

        await eventually(caught_up, 10, "the view seeing every write")
        assert set(view.records) == {ids[2], ids[3], ids[4]}  # two finished, one live
        assert set(view.live) == {ids[4]}
        assert len(view.all()) == 3
        # a dropped job keeps its revision: an older entry of it arriving late changes nothing
        stale = lifecycle.new_record(ids[0], SPEC, utcnow(), "t")
        view.apply(stale, 1)
        assert ids[0] not in view.live and view.get(ids[0]) is None
        # a newer write of a dropped finished job brings it back as finished, still bounded
        found = await store.get(ids[0])
        assert found is not None
        view.apply(found[0].model_copy(update={"reason": "again"}), found[1] + 1000)
        assert view.get(ids[0]) is not None and ids[0] not in view.live
        assert len([r for r in view.all() if r.state.terminal]) == 2
    finally:
        await view.stop()


async def test_without_a_bound_every_record_stays(jobs):
    store = JobStore(jobs, remember=0)
    view = JobView(jobs)
    await view.start()
    try:
        ids = [await new_job(store) for _ in range(3)]
        for job_id in ids:
            await finish(store, job_id)
        last = (await jobs.status()).stream_info.state.last_seq

        async def caught_up():
            return view.newest_revision >= last

        await eventually(caught_up, 10, "the view seeing every write")
        assert set(view.records) == set(ids) and not view.live
    finally:
        await view.stop()


async def test_a_view_keeping_no_finished_record_reads_only_the_finished_ones_it_asks_for(jobs):
    """A start-up read of a long history (executor, telemetry): the view holds the live jobs only,
    and a finished record is read in full, and shown to listeners, only when ``read_finished``
    asks for it on its peek; the others keep just their revision."""
    store = JobStore(jobs, remember=0)
    ids = [await new_job(store) for _ in range(30)]
    for job_id in ids[1:29]:
        await finish(store, job_id)
    now = utcnow()
    await store.update(
        ids[0], lambda r: lifecycle.finish(r, JobState.REJECTED, now, exit_code=None, reason="t")
    )
    peeked: list[JobState] = []

    def read_finished(peek: RecordPeek) -> bool:
        peeked.append(peek.state)
        return peek.state == JobState.REJECTED

    seen: list[str] = []
    view = JobView(jobs, keep_finished=0, read_finished=read_finished)
    view.on_change(lambda _before, after: seen.append(after.job_id))
    await view.start()
    try:
        assert set(view.records) == {ids[29]} and set(view.live) == {ids[29]}
        assert sorted(peeked) == sorted([JobState.CANCELLED] * 28 + [JobState.REJECTED])
        assert sorted(seen) == sorted([ids[0], ids[29]])
        assert len(view.revisions) == 30  # a late, older entry of a finished job is still ignored
        view.apply(lifecycle.new_record(ids[3], SPEC, utcnow(), "t"), 1)
        assert ids[3] not in view.live
    finally:
        await view.stop()


async def test_the_first_read_reads_in_full_only_the_finished_records_it_keeps(jobs):
    """A restart with a long history: of the finished records the bucket holds, only the
    ``keep_finished`` latest are read in full and reach the listeners; the older ones are peeked
    at and keep their revision."""
    store = JobStore(jobs, remember=0)
    ids = [await new_job(store) for _ in range(12)]
    for job_id in ids[:10]:
        await finish(store, job_id)
    seen: list[tuple[str | None, str]] = []
    view = JobView(jobs, keep_finished=3)
    view.on_change(lambda before, after: seen.append((before and before.job_id, after.job_id)))
    await view.start()
    try:
        assert set(view.records) == {*ids[7:10], *ids[10:]}
        assert sorted(seen) == sorted((None, job_id) for job_id in [*ids[7:10], *ids[10:]])
        assert len(view.revisions) == 12
        view.apply(lifecycle.new_record(ids[1], SPEC, utcnow(), "t"), 1)  # late and older: ignored
        assert ids[1] not in view.live
        await finish(store, ids[11])  # after the first read, every finished record is read

        async def dropped_oldest():
            return ids[7] not in view.records and ids[11] in view.records

        await eventually(dropped_oldest, 10, "the view taking a job that ends after its first read")
    finally:
        await view.stop()
