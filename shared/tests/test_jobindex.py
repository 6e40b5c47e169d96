"""The jobs index (jobindex.py) against a real nats-server: kept by JobStore's writes, right under
concurrent transitions, a stale entry skipped, pages complete and non-overlapping while jobs are
added, and a lost index rebuilt from the records."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta

import pytest

from trainyard_contracts import JobRecord, JobSpec, JobState, lifecycle
from trainyard_shared.jobindex import IndexEntry, IndexQuery, JobIndex, to_ns
from trainyard_shared.jobstore import JobStore
from trainyard_shared.testing.helpers import eventually

pytestmark = pytest.mark.service

BASE = datetime(2026, 1, 1, tzinfo=UTC)


def record(i: int, queue: str = "default", state: JobState = JobState.SUBMITTED, **labels: str) -> JobRecord:
    spec = JobSpec(name=f"job-{i}", queue=queue, command=["true"], labels=labels)
    fresh = lifecycle.new_record(f"idx{i:06d}", spec, BASE + timedelta(seconds=i), "test")
    return fresh.model_copy(update={"state": state})


class Index:
    def __init__(self, index: JobIndex, store: JobStore) -> None:
        self.index, self.store = index, store

    async def read(self, job_id: str) -> JobRecord | None:
        found = await self.store.get(job_id)
        return found[0] if found else None

    async def ids(self, **query) -> list[str]:
        return [r.job_id for r in await self.index.page(IndexQuery(**query), self.read)]


@pytest.fixture
def indexed(indexed_jobs):
    return Index(*indexed_jobs)


def newest_first(records: list[JobRecord]) -> list[str]:
    return [r.job_id for r in sorted(records, key=lambda r: (r.submitted_at, r.job_id), reverse=True)]


async def test_the_index_follows_each_transition_and_lists_in_submission_order(indexed):
    records = [record(i, queue="alpha" if i % 3 else "beta") for i in range(40)]
    random.Random(7).shuffle(records)  # written in any order: listed by submission time
    await asyncio.gather(*(indexed.store.create(r) for r in records))
    for r in records[:10]:
        await indexed.store.update(r.job_id, lambda x: lifecycle.advance(x, JobState.QUEUED, BASE))
    moved = {r.job_id for r in records[:10]}

    assert await indexed.ids(limit=100) == newest_first(records)
    assert await indexed.ids(limit=5) == newest_first(records)[:5]
    assert await indexed.ids(state="queued", limit=100) == [j for j in newest_first(records) if j in moved]
    assert await indexed.ids(state="submitted", queue="beta", limit=100) == [
        r.job_id
        for r in sorted(records, key=lambda r: r.submitted_at, reverse=True)
        if r.job_id not in moved and r.spec.queue == "beta"
    ]
    assert await indexed.ids(oldest_first=True, limit=3) == newest_first(records)[::-1][:3]

    # one entry per job (and its arrival entry): the entries of the states a job left are removed
    # (without waiting)
    async def entries() -> int | None:
        count = (await indexed.index.js.stream_info(indexed.index.stream)).state.messages
        return count if count == 2 * len(records) else None

    assert await eventually(entries, timeout=10.0) == 2 * len(records)


async def test_concurrent_transitions_leave_one_entry_per_job_in_its_final_state(indexed):
    jobs = [record(i) for i in range(30)]
    await asyncio.gather(*(indexed.store.create(r) for r in jobs))

    async def walk(job: JobRecord) -> None:
        # two writers race each job: one queues and runs it, the other cancels it while it can
        async def run() -> None:
            for state in (JobState.QUEUED, JobState.SCHEDULED, JobState.RUNNING):
                await indexed.store.update(
                    job.job_id, lambda r, s=state: None if r.state.terminal else lifecycle.advance(r, s, BASE)
                )

        async def cancel() -> None:
            await indexed.store.update(
                job.job_id,
                lambda r: None if r.state.terminal else lifecycle.advance(r, JobState.CANCELLED, BASE),
            )

        await asyncio.gather(run(), cancel())

    await asyncio.gather(*(walk(j) for j in jobs))

    finals = {r.job_id: r.state.value for r in [await indexed.read(j.job_id) for j in jobs] if r}
    listed = {}
    for state in ("submitted", "queued", "scheduled", "running", "cancelled"):
        for job_id in await indexed.ids(state=state, limit=100):
            assert job_id not in listed, f"{job_id} listed in {listed[job_id]} and {state}"
            listed[job_id] = state
    assert listed == finals
    assert sorted(await indexed.ids(limit=100)) == sorted(finals)


async def test_a_stale_entry_is_skipped_and_a_missing_record_is_not_listed(indexed):
    jobs = [record(i) for i in range(5)]
    await asyncio.gather(*(indexed.store.create(r) for r in jobs))
    # an entry written before a compare-and-set that never happened (a writer that lost, or died)
    await indexed.index.enter(jobs[4].model_copy(update={"state": JobState.RUNNING}))
    # a record removed behind the index's back
    await indexed.store.kv.delete(jobs[3].job_id)

    assert await indexed.ids(state="running") == []
    assert await indexed.ids(limit=3) == [jobs[4].job_id, jobs[2].job_id, jobs[1].job_id]
    # the stale entry's job still lists in its real state, once
    assert (await indexed.ids(limit=10)).count(jobs[4].job_id) == 1


async def test_pages_are_complete_and_do_not_overlap_while_jobs_are_added(indexed):
    first = [record(i) for i in range(0, 200, 2)]  # even seconds
    await asyncio.gather(*(indexed.store.create(r) for r in first))
    seen: list[str] = []
    past = None
    added: list[JobRecord] = []
    while True:
        page = await indexed.index.page(IndexQuery(limit=17, past=past), indexed.read)
        seen += [r.job_id for r in page]
        if len(page) < 17:
            break
        last = page[-1]
        past = (to_ns(last.submitted_at), last.job_id)
        # jobs submitted meanwhile: one newer than every page, one older than the boundary
        # (odd seconds, between jobs there at the start)
        newer, older = record(1000 + len(added)), record(int(last.job_id[3:]) - 1)
        added.append(newer)
        await asyncio.gather(indexed.store.create(newer), indexed.store.create(older))

    assert len(seen) == len(set(seen))  # no row twice
    assert set(r.job_id for r in first) <= set(seen)  # every job there at the start, once
    assert not {r.job_id for r in added} & set(seen)  # a newer job is on the first page, not later ones


async def test_a_lost_index_is_rebuilt_from_the_records(indexed):
    jobs = [record(i, state=[JobState.QUEUED, JobState.FAILED][i % 2]) for i in range(20)]
    await asyncio.gather(*(indexed.store.create(r) for r in jobs))
    await indexed.index.js.purge_stream(indexed.index.stream)  # the index is lost
    assert await indexed.ids(limit=100) == []
    assert not await indexed.index.built()

    async def every_record() -> list[JobRecord]:
        return [r for r in [await indexed.read(j.job_id) for j in jobs] if r]

    assert await indexed.index.ensure_built(every_record) == 20
    assert await indexed.index.ensure_built(every_record) is None  # once
    assert await indexed.ids(limit=100) == newest_first(jobs)
    assert await indexed.ids(state="failed", limit=100) == newest_first(
        [j for j in jobs if j.state.value == "failed"]
    )


@pytest.mark.unit
def test_an_entry_round_trips_and_knows_its_record():
    r = record(3, queue="beta", sweep="lr")
    again = IndexEntry.decode(IndexEntry.of(r).encode())
    assert (again.job_id, again.queue, again.state, again.name, again.labels) == (
        r.job_id,
        "beta",
        "submitted",
        "job-3",
        {"sweep": "lr"},
    )
    assert again.describes(r)
    assert not again.describes(r.model_copy(update={"state": JobState.QUEUED}))
    assert IndexQuery(labels={"sweep": "bs"}).matches(again) is False


async def test_a_reader_removes_a_stale_entry_written_long_ago_and_keeps_a_young_one(indexed):
    jobs = [record(i) for i in range(3)]
    await asyncio.gather(*(indexed.store.create(r) for r in jobs))
    js, subjects = indexed.index.js, indexed.index.subjects
    old, young = jobs[0], jobs[1]
    # a lost race to "running" two minutes ago, and one a moment ago (its writer may still be at it)
    long_ago = IndexEntry.of(old.model_copy(update={"state": JobState.RUNNING}), time.time_ns() - 120 * 10**9)
    just_now = IndexEntry.of(young.model_copy(update={"state": JobState.RUNNING}), time.time_ns())
    for entry in (long_ago, just_now):
        await js.publish(indexed.index.subject(entry.queue, entry.state, entry.job_id), entry.encode())

    assert await indexed.ids(state="running") == []

    async def only_the_young_one_left() -> bool:
        info = await js.stream_info(
            indexed.index.stream, subjects_filter=f"{subjects.prefix}.jobidx.*.running.*"
        )
        return set(info.state.subjects or {}) == {indexed.index.subject("default", "running", young.job_id)}

    assert await eventually(only_the_young_one_left, 10.0, "the old stale entry removed")
    assert await indexed.ids(limit=10) == newest_first(jobs)


async def test_a_job_that_moved_on_while_a_page_was_read_is_listed_from_its_record(indexed):
    """Its entry is stale and its new one not read (here: never written, the record rewritten
    behind the index's back, as a page reading while a writer moves the job sees it): a page whose
    filters its record still passes lists it, once, where its rank puts it; one whose filters it no
    longer passes does not."""
    jobs = [record(i) for i in range(3)]
    await asyncio.gather(*(indexed.store.create(r) for r in jobs))
    moved = jobs[1].model_copy(update={"state": JobState.RUNNING})
    await indexed.store.kv.put(moved.job_id, moved.model_dump_json().encode())

    assert await indexed.ids(limit=10) == newest_first(jobs)
    assert await indexed.ids(state="submitted", limit=10) == [jobs[2].job_id, jobs[0].job_id]
    assert await indexed.ids(queue="default", limit=10) == newest_first(jobs)
    assert await indexed.ids(queue="other", limit=10) == []


async def test_counts_are_the_servers_and_follow_concurrent_transitions(indexed):
    """``JobIndex.count``: the waiting jobs of a queue counted without reading them, right after
    writers race every job (each moved once, by compare-and-set, whoever wins)."""
    jobs = [record(i, queue="alpha" if i % 4 else "beta") for i in range(60)]
    await asyncio.gather(*(indexed.store.create(r) for r in jobs))
    assert (await indexed.index.count("alpha", "submitted"))[0] == 45
    count, first = await indexed.index.count("beta", "submitted")
    assert count == 15 and first is not None and first.queue == "beta"
    assert await indexed.index.count("alpha", "requeued") == (0, None)

    def queue(r: JobRecord) -> JobRecord | None:
        return lifecycle.advance(r, JobState.QUEUED, BASE) if r.state is JobState.SUBMITTED else None

    # two writers each try to queue every second job: one compare-and-set wins, the other sees it done
    moved = jobs[::2]
    await asyncio.gather(*(indexed.store.update(j.job_id, queue) for j in moved + moved))

    async def settled() -> tuple[int, int] | None:
        # the entries of the state left are removed without waiting: the count follows a moment later
        counts = [
            (await indexed.index.count(q, s))[0] for q in ("alpha", "beta") for s in ("submitted", "queued")
        ]
        return (counts[0] + counts[2], counts[1] + counts[3]) if counts[0] + counts[2] == 30 else None

    assert await eventually(settled, 10.0, "the entries of the state left removed") == (30, 30)
    in_beta = [(await indexed.index.count("beta", s))[0] for s in ("submitted", "queued")]
    assert in_beta == [
        sum(1 for j in jobs[1::2] if j.spec.queue == "beta"),
        sum(1 for j in moved if j.spec.queue == "beta"),
    ]


async def test_oldest_first_walks_the_arrival_entries_and_agrees_with_a_full_read(indexed, monkeypatch):
    """Records created now (their arrival entries on time) in shuffled concurrent batches, moved
    on, one created late with an old submission time: every oldest-first page, paged through, is
    the records in submission order, with and without filters, the walk and the full read alike."""
    from trainyard_shared import jobindex, jobindex_oldest

    # on time within 0.2 s, not 5: the walk hands out the early batches before it has read the later
    monkeypatch.setattr(jobindex, "ARRIVAL_LATE_NS", 200_000_000)
    jobs: list[JobRecord] = []
    for start in range(0, 240, 30):
        now = datetime.now(UTC)  # stamped as the service stamps a submission, just before it
        batch = [
            record(i, queue="alpha" if i % 3 else "beta", sweep="lr" if i % 5 == 0 else "bs").model_copy(
                update={"submitted_at": now + timedelta(microseconds=i)}
            )
            for i in range(start, start + 30)
        ]
        jobs += batch
        random.Random(start).shuffle(batch)
        await asyncio.gather(*(indexed.store.create(r) for r in batch))
    late = record(999, queue="beta", sweep="lr")  # submitted long ago, created now: late
    await indexed.store.create(late)
    jobs.append(late)
    await indexed.index.ensure_built(lambda: asyncio.sleep(0, []))  # the markers (nothing to rebuild)
    for r in jobs[::4]:  # moved on: later entries of their new state
        await indexed.store.update(r.job_id, lambda x: lifecycle.advance(x, JobState.QUEUED, BASE))
    finals = {r.job_id: r for r in [await indexed.read(j.job_id) for j in jobs] if r}

    async def paged(**query) -> list[str]:
        seen: list[str] = []
        past = None
        while True:
            page = await indexed.index.page(
                IndexQuery(limit=23, oldest_first=True, past=past, **query), indexed.read
            )
            seen += [r.job_id for r in page]
            if len(page) < 23:
                return seen
            past = (to_ns(page[-1].submitted_at), page[-1].job_id)

    def expected(**query) -> list[str]:
        kept = [
            r
            for r in finals.values()
            if all(
                {"queue": r.spec.queue, "state": r.state.value}.get(k, r.spec.labels.get(k)) == v
                for k, v in query.items()
            )
        ]
        return [r.job_id for r in sorted(kept, key=lambda r: (r.submitted_at, r.job_id))]

    handed_early: list[int] = []
    real = indexed.index.stored_at

    async def stored_at(seq: int) -> int:
        handed_early.append(seq)  # a bound asked for: the walk did not read everything first
        return await real(seq)

    monkeypatch.setattr(indexed.index, "stored_at", stored_at)
    monkeypatch.setattr(jobindex_oldest, "STATE_READ_AT_MOST", 0)  # a state filter walks too
    monkeypatch.setattr(jobindex_oldest, "FIRST_WINDOW", 64)  # several windows, bounds between
    for query in ({}, {"queue": "beta"}, {"state": "queued"}, {"queue": "alpha", "state": "submitted"}):
        assert await paged(**query) == expected(**query), query
    assert handed_early  # the arrival entries were walked in windows, with bounds between
    labelled = await indexed.index.page(
        IndexQuery(labels={"sweep": "lr"}, limit=5, oldest_first=True), indexed.read
    )
    assert [r.job_id for r in labelled] == [
        late.job_id,
        *[j.job_id for j in jobs[:-1] if j.spec.labels["sweep"] == "lr"][:4],
    ]


async def test_a_read_of_every_entry_ends_when_the_entries_it_was_to_read_are_removed(indexed):
    """``read_all``'s consumer counted the entries when it began; removed under it (jobs moving on,
    their old entries purged) they are never delivered, and no delivery says the read is over: the
    read must end anyway, not wait for ever (the queues page and its sampler read this way)."""
    index = indexed.index
    entries = [IndexEntry.of(record(i, state=JobState.RUNNING), time.time_ns()) for i in range(20_000)]
    for start in range(0, len(entries), 1000):
        await asyncio.gather(
            *(
                index.js.publish(index.subject(e.queue, e.state, e.job_id), e.encode())
                for e in entries[start : start + 1000]
            )
        )
    last = (await index.js.stream_info(index.stream)).state.last_seq
    read: list[IndexEntry] = []
    purge: list[asyncio.Task[object]] = []

    def offer(entry: IndexEntry) -> None:
        read.append(entry)
        if not purge:  # every job moves on while the read has begun
            purge.append(
                asyncio.ensure_future(
                    index.js.purge_stream(index.stream, subject=index.filter(None, "running"))
                )
            )

    await asyncio.wait_for(index.read_all(index.filter(None, "running"), last, offer), 60)
    await purge[0]
    assert 0 < len(read) <= len(entries)


async def test_a_read_from_the_start_of_the_stream_reads_past_its_markers(indexed):
    """The built markers are the stream's first messages and hold no entry: an unfiltered read of
    more than one batch from there read the first batch only, and a page lost every job after it."""
    await indexed.index.ensure_built(lambda: asyncio.sleep(0, []))  # the markers, first
    jobs = [record(i) for i in range(1000)]  # 2,000 entries (each with its arrival entry)
    for start in range(0, len(jobs), 100):
        await asyncio.gather(*(indexed.store.create(r) for r in jobs[start : start + 100]))
    assert await indexed.ids(limit=1000) == newest_first(jobs)


def direct_gets(index: JobIndex, monkeypatch) -> list[str]:
    """The direct get requests ``index`` sends from now on (each a round trip to the server; a
    request is published through ``publish`` too)."""
    sent: list[str] = []
    publish = index.nc.publish

    async def counted(subject: str, *args, **kwargs):
        if subject.startswith("$JS.API.DIRECT.GET."):
            sent.append(args[0].decode() if args else subject)
        return await publish(subject, *args, **kwargs)

    monkeypatch.setattr(index.nc, "publish", counted)
    return sent


async def test_a_state_with_few_entries_is_read_in_one_request_not_window_by_window(indexed, monkeypatch):
    """A state holding at most a request's worth of entries (none running in a history of
    finished jobs) is read from its first entry at once: the windows back to the stream's start,
    never filling the page, cost a round trip each (issue 23: 16 of them at 100 000 records)."""
    from trainyard_shared import jobindex

    monkeypatch.setattr(jobindex, "FIRST_WINDOW", 8)  # the history spans many windows
    running = [record(i, state=JobState.RUNNING) for i in range(3)]
    finished = [record(10 + i, state=JobState.SUCCEEDED) for i in range(150)]
    for r in running:  # stored first: the oldest entries of the stream
        await indexed.store.create(r)
    await asyncio.gather(*(indexed.store.create(r) for r in finished))
    gets = direct_gets(indexed.index, monkeypatch)

    assert await indexed.ids(state="running", limit=50) == newest_first(running)
    assert len(gets) <= 3, gets  # the count, the state's entries, the entries stored since
    gets.clear()
    assert await indexed.ids(state="cancelled", limit=50) == []
    assert len(gets) <= 2, gets  # the count says none; the entries stored since
    # a state with more entries than that is still read window by window, newest first
    assert await indexed.ids(state="succeeded", limit=5) == newest_first(finished)[:5]


async def test_a_windows_entries_and_the_servers_time_at_its_start_are_asked_together(indexed, monkeypatch):
    """A newest-first page asks each window's entries and the server's time at the window's start
    at once: a round trip per window, not two one after the other (issue 23)."""
    from trainyard_shared import jobindex

    monkeypatch.setattr(jobindex, "FIRST_WINDOW", 8)
    jobs = [record(i) for i in range(120)]
    await asyncio.gather(*(indexed.store.create(r) for r in jobs))
    index = indexed.index
    reading = 0
    stamps_alone: list[int] = []
    read_range, stored_at = index.read_range, index.stored_at

    async def counted_read(*args, **kwargs):
        nonlocal reading
        reading += 1
        try:
            return await read_range(*args, **kwargs)
        finally:
            reading -= 1

    async def counted_stamp(seq: int) -> int:
        if not reading:
            stamps_alone.append(seq)
        return await stored_at(seq)

    monkeypatch.setattr(index, "read_range", counted_read)
    monkeypatch.setattr(index, "stored_at", counted_stamp)

    assert await indexed.ids(limit=5) == newest_first(jobs)[:5]
    assert stamps_alone == []


async def test_a_newest_first_read_without_a_filter_skips_the_arrival_entries_undecoded(indexed, monkeypatch):
    """Half of an unfiltered read's entries are arrival entries, which a newest-first page never
    ranks: they are skipped before they are decoded (issue 23: decoding was ~12 % of a page's
    samples at 100 000 records)."""
    jobs = [record(i, queue="alpha" if i % 2 else "beta") for i in range(80)]
    await asyncio.gather(*(indexed.store.create(r) for r in jobs))
    decoded = 0
    decode = IndexEntry.decode

    def counted(data: bytes) -> IndexEntry:
        nonlocal decoded
        decoded += 1
        return decode(data)

    monkeypatch.setattr(IndexEntry, "decode", staticmethod(counted))
    # submitted long before they were stored: the page reads every window back to the start
    assert await indexed.ids(limit=5) == newest_first(jobs)[:5]
    alpha = [r.job_id for r in jobs if r.spec.queue == "alpha"]
    assert await indexed.ids(queue="alpha", limit=100) == alpha[::-1]
    assert decoded <= 2 * len(jobs), decoded  # each job's state entry, once per page
