"""``GET /v1/jobs`` reads the jobs bucket when asked; the service follows no bucket on the job path.

Against the session's real nats-server: records are written straight into the bucket (as the
scheduler and the executors would), then listed with filters and limits smaller than what is stored.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import timedelta

import httpx
import nats.js.errors
import pytest

from trainyard_contracts import JobSpec, lifecycle
from trainyard_contracts._time import utcnow
from trainyard_contracts.states import JobState
from trainyard_shared.settings import CommonSettings
from trainyard_submission.app import create_app
from trainyard_submission.joblist import BucketReader, NewestMatches
from trainyard_submission.settings import SubmissionSettings

from .conftest import AUTH, TOKEN

STATES = [JobState.SUBMITTED, JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED]
QUEUES = ["default", "alpha", "beta"]


def record(i: int, start, state: JobState, queue: str):
    spec = JobSpec.model_validate({"name": f"job-{i}", "command": ["true"], "queue": queue})
    job_id = f"list{i:06d}"
    # every third pair shares its submission time: the job id breaks the tie
    submitted = start + timedelta(seconds=i // 2 * 2 if i % 3 == 0 else i)
    return lifecycle.new_record(job_id, spec, submitted, "test").model_copy(update={"state": state})


def expected(records, state=None, queue=None, limit=100) -> list[str]:
    rows = [
        r
        for r in records
        if (state is None or r.state.value == state) and (queue is None or r.spec.queue == queue)
    ]
    rows.sort(key=lambda r: (r.submitted_at, r.job_id), reverse=True)
    return [r.job_id for r in rows[:limit]]


async def listed(api, **params) -> list[str]:
    resp = await api.get("/v1/jobs", params=params, headers=AUTH)
    assert resp.status_code == 200, resp.text
    return [row["job_id"] for row in resp.json()["jobs"]]


@pytest.mark.service
async def test_list_filters_orders_and_limits_over_the_bucket(api):
    store = api.app.state.trainyard["service"].store
    start = utcnow() - timedelta(days=1)
    records = [record(i, start, STATES[i % len(STATES)], QUEUES[i % len(QUEUES)]) for i in range(120)]
    for r in records:
        await store.create(r)
    # a later write of a record counts, not its first one
    moved = records[7].model_copy(update={"state": JobState.CANCELLED})
    await store.update(moved.job_id, lambda _: moved)
    records[7] = moved
    # a removed record and a value that is no record are not listed
    await store.kv.delete(records[8].job_id)
    del records[8]
    await store.kv.put("list999999", b"{not a record")

    assert await listed(api) == expected(records)  # the default limit, 100 of 120
    assert await listed(api, limit=7) == expected(records, limit=7)
    assert await listed(api, state="running", limit=5) == expected(records, state="running", limit=5)
    assert await listed(api, queue="alpha", limit=9) == expected(records, queue="alpha", limit=9)
    both = await listed(api, state="failed", queue="beta", limit=3)
    assert both == expected(records, state="failed", queue="beta", limit=3) and len(both) == 3
    assert await listed(api, state="cancelled") == [moved.job_id]
    assert await listed(api, queue="gamma") == []
    assert len(await listed(api, limit=10_000)) == len(records)


async def consumers_on(js, stream: str) -> int:
    try:
        return (await js.stream_info(stream)).state.consumer_count
    except nats.js.errors.NotFoundError:
        return 0


async def count_becomes(js, stream: str, want: int, deadline: float = 10.0) -> int:
    end = time.monotonic() + deadline
    # a server-side count: nothing to wait on but the server, asked again until the deadline
    while (count := await consumers_on(js, stream)) != want and time.monotonic() < end:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return count


@pytest.mark.service
async def test_no_consumer_follows_the_jobs_bucket(nats_server, prefix, tmp_path, js):
    """Started, with jobs submitted and listed, the service leaves the jobs bucket unwatched."""
    common = CommonSettings(nats_url=nats_server.url, prefix=prefix, data_dir=tmp_path / "d")
    stream = f"KV_{common.subjects.buckets.jobs}"
    assert await consumers_on(js, stream) == 0
    app = create_app(common, SubmissionSettings(token=TOKEN))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            # a job view would have created its consumer before the app started serving
            assert await consumers_on(js, stream) == 0
            spec = '{"name": "t", "command": ["true"]}'
            job_id = (await client.post("/v1/jobs", content=spec, headers=AUTH)).json()["job_id"]
            assert await consumers_on(js, stream) == 0
            # a listing reads through a consumer of its own and removes it when done
            rows = (await client.get("/v1/jobs", headers=AUTH)).json()["jobs"]
            assert [row["job_id"] for row in rows] == [job_id]
            assert await count_becomes(js, stream, 0) == 0


@pytest.mark.unit
def test_newest_matches_keeps_only_the_newest_limit():
    start = utcnow()
    records = [record(i, start, STATES[i % len(STATES)], QUEUES[i % len(QUEUES)]) for i in range(50)]
    matches = NewestMatches(None, "beta", 4)
    for r in records:
        matches.offer(r.job_id, r.model_dump_json().encode())
    matches.offer("broken", b"[]")
    assert [r.job_id for r in matches.records()] == expected(records, queue="beta", limit=4)
    assert len(matches._heap) == 4 and matches.seen == 51
    with pytest.raises(ValueError):
        NewestMatches(None, None, 0)


class WritesAfterStreamInfo:
    """The real JetStream context, except that two records are rewritten just after the reader
    learns the stream's last sequence: a listing racing the scheduler's writes, made deterministic."""

    def __init__(self, js, write) -> None:
        self._js, self._write = js, write

    def __getattr__(self, name):
        return getattr(self._js, name)

    async def stream_info(self, name, *args, **kwargs):
        info = await self._js.stream_info(name, *args, **kwargs)
        await self._write()
        return info


@pytest.mark.service
async def test_a_listing_racing_writes_still_lists_every_record(api):
    trainyard = api.app.state.trainyard
    store, bucket = trainyard["service"].store, trainyard["subjects"].buckets.jobs
    start = utcnow()
    records = [record(i, start, JobState.QUEUED, "default") for i in range(6)]
    for r in records:
        await store.create(r)

    async def rewrite_first_and_last() -> None:
        for r in (records[0], records[-1]):
            running = r.model_copy(update={"state": JobState.RUNNING})
            await store.kv.put(r.job_id, running.model_dump_json().encode())

    reader = BucketReader(WritesAfterStreamInfo(trainyard["js"], rewrite_first_and_last), bucket)
    rows = (await reader.read(NewestMatches(None, None, 100))).records()
    assert sorted(r.job_id for r in rows) == sorted(r.job_id for r in records)
    assert await consumers_on(trainyard["js"], f"KV_{bucket}") == 0


@pytest.mark.unit
def test_newest_matches_lists_each_key_once_with_its_latest_value():
    start = utcnow()
    records = [record(i, start, JobState.QUEUED, "default") for i in range(5)]
    matches = NewestMatches(None, None, 3)
    queued_only = NewestMatches("queued", None, 10)
    for revision, r in enumerate(records, start=1):
        for sink in (matches, queued_only):
            sink.offer(r.job_id, r.model_dump_json().encode(), revision)
    # the newest job moves on twice while the listing reads, the oldest once
    newest, oldest = records[-1], records[0]
    for revision, state in ((6, JobState.SCHEDULED), (7, JobState.RUNNING)):
        moved = newest.model_copy(update={"state": state}).model_dump_json().encode()
        for sink in (matches, queued_only):
            sink.offer(newest.job_id, moved, revision)
    old_moved = oldest.model_copy(update={"state": JobState.RUNNING}).model_dump_json().encode()
    for sink in (matches, queued_only):
        sink.offer(oldest.job_id, old_moved, 8)
    # a replayed older value does not replace the newer one
    matches.offer(newest.job_id, newest.model_dump_json().encode(), 5)

    rows = matches.records()
    assert [r.job_id for r in rows] == expected(records, limit=3)
    assert rows[0].state == JobState.RUNNING
    # a record that left the state during the read is not listed under it
    assert [r.job_id for r in queued_only.records()] == [r.job_id for r in reversed(records[1:4])]
    # a key deleted during the read is no row
    matches.discard(records[3].job_id)
    assert records[3].job_id not in [r.job_id for r in matches.records()]


@pytest.mark.service
async def test_a_listing_while_records_change_lists_each_job_once(api):
    """The scheduler and executors rewrite records while a listing reads: one row per job."""
    trainyard = api.app.state.trainyard
    store = trainyard["service"].store
    start = utcnow()
    records = [record(i, start, JobState.QUEUED, "default") for i in range(300)]
    for r in records:
        await store.create(r)
    states = [JobState.SCHEDULED, JobState.RUNNING, JobState.SUCCEEDED]
    listings: list[list[str]] = []

    async def rewrite_until_listed() -> None:
        for turn in itertools.count():
            if len(listings) == 5:
                return
            r = records[turn % len(records)]
            moved = r.model_copy(update={"state": states[turn % len(states)]})
            await store.update(r.job_id, lambda _, m=moved: m)  # as the scheduler writes: the index kept

    writer = asyncio.create_task(rewrite_until_listed())
    try:
        for _ in range(5):
            listings.append(await listed(api, limit=1000))
    finally:
        await writer
    for rows in listings:
        assert len(rows) == len(set(rows)) == len(records)


@pytest.mark.service
async def test_the_api_pages_through_every_job_with_a_cursor_in_either_order(api):
    store = api.app.state.trainyard["service"].store
    start = utcnow() - timedelta(days=1)
    records = [record(i, start, STATES[i % len(STATES)], "default") for i in range(23)]
    for r in records:
        await store.create(r)

    async def every_page(**params) -> list[str]:
        seen: list[str] = []
        cursor = None
        for _ in range(10):
            query = {**params, **({"cursor": cursor} if cursor else {})}
            answer = (await api.get("/v1/jobs", params=query, headers=AUTH)).json()
            seen += [row["job_id"] for row in answer["jobs"]]
            cursor = answer["next_cursor"]
            if cursor is None:
                return seen
        raise AssertionError("more pages than jobs")

    assert await every_page(limit=5) == expected(records, limit=100)
    assert await every_page(limit=4, order="oldest") == expected(records, limit=100)[::-1]
    assert await every_page(limit=2, state="failed") == expected(records, state="failed")
    bad = await api.get("/v1/jobs", params={"cursor": "not a cursor"}, headers=AUTH)
    assert bad.status_code == 422


@pytest.mark.service
async def test_records_from_before_the_index_are_listed_after_a_restart(nats_server, prefix, tmp_path, js):
    """An installation whose records were written before the jobs index existed (or whose index
    was lost): the service builds the index from the bucket when it starts."""
    common = CommonSettings(nats_url=nats_server.url, prefix=prefix, data_dir=tmp_path / "d")
    start = utcnow() - timedelta(days=1)
    records = [record(i, start, STATES[i % len(STATES)], QUEUES[i % len(QUEUES)]) for i in range(12)]
    app = create_app(common, SubmissionSettings(token=TOKEN))
    async with app.router.lifespan_context(app):  # declares the streams and buckets
        kv = app.state.trainyard["service"].store.kv
        for r in records:  # straight into the bucket: no index entry
            await kv.put(r.job_id, r.model_dump_json().encode())
    await js.purge_stream(common.subjects.streams.jobindex)  # no entry, no built marker

    app = create_app(common, SubmissionSettings(token=TOKEN))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            assert await listed(client) == expected(records)
            assert await listed(client, state="failed") == expected(records, state="failed")
