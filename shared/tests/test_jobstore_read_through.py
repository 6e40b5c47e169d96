"""JobStore reading through a job view: the same answers as reading the bucket, fewer reads."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from faststream.nats import NatsBroker

from trainyard_contracts import JobSpec, JobState, Subjects, lifecycle
from trainyard_shared.bus import open_buckets
from trainyard_shared.jobstore import JobStore

pytestmark = pytest.mark.service


class FrozenView:
    """A view that stopped following the bucket: it holds what it was given, nothing newer."""

    def __init__(self) -> None:
        self.records: dict = {}
        self.revisions: dict = {}

    def hold(self, record, revision: int) -> None:
        self.records[record.job_id] = record
        self.revisions[record.job_id] = revision


class Reads:
    """Counts the reads of the bucket a store makes (its ``kv.get``)."""

    def __init__(self, store: JobStore) -> None:
        self.count = 0
        real_get = store.kv.get

        async def counting_get(key, *args, **kwargs):
            self.count += 1
            return await real_get(key, *args, **kwargs)

        store.kv.get = counting_get


@pytest.fixture
async def stores(nats_server, prefix):
    broker = NatsBroker(nats_server.url)
    async with broker:
        await broker.start()
        buckets = await open_buckets(broker, Subjects(prefix))
        yield JobStore(buckets.jobs), JobStore(buckets.jobs)


async def test_a_stale_view_costs_a_failed_cas_and_the_write_lands_on_the_stored_record(stores):
    writer, reader = stores
    view = FrozenView()
    reader.read_through(view)
    now = datetime.now(UTC)
    record = lifecycle.new_record("jobrt0001", JobSpec(name="a", command=["true"]), now, None)
    view.hold(record, await writer.create(record))
    await writer.update("jobrt0001", lambda r: lifecycle.advance(r, JobState.QUEUED, now))  # view now stale

    result = await reader.update(
        "jobrt0001", lambda r: r.model_copy(update={"reason": f"seen {r.state.value}"})
    )

    assert result is not None and result[0].state == JobState.QUEUED  # decided on the stored record
    stored, _ = await writer.get("jobrt0001")
    assert (stored.state, stored.reason) == (JobState.QUEUED, "seen queued")


async def test_a_no_decided_on_a_stale_view_is_checked_against_the_stored_record(stores):
    writer, reader = stores
    view = FrozenView()
    reader.read_through(view)
    now = datetime.now(UTC)
    record = lifecycle.new_record("jobrt0002", JobSpec(name="a", command=["true"]), now, None)
    view.hold(record, await writer.create(record))
    await writer.update("jobrt0002", lambda r: lifecycle.advance(r, JobState.QUEUED, now))

    # "only a queued job": the stale view says submitted (no), the bucket says queued (yes)
    result = await reader.update(
        "jobrt0002", lambda r: r.model_copy(update={"reason": "ok"}) if r.state == JobState.QUEUED else None
    )

    assert result is not None and result[1].reason == "ok"


async def test_a_store_writes_on_what_it_remembers_and_a_stale_memory_costs_one_failed_cas(stores):
    executor, other = stores
    now = datetime.now(UTC)
    record = lifecycle.new_record("jobrt0003", JobSpec(name="c", command=["true"]), now, None)
    await executor.create(record)
    reads = Reads(executor)
    await executor.update("jobrt0003", lambda r: lifecycle.advance(r, JobState.QUEUED, now))
    assert reads.count == 0  # its own create was remembered: no read before the write

    # another process writes in between: the remembered record is stale now
    await other.update("jobrt0003", lambda r: r.model_copy(update={"cancel_requested": True}))
    reads.count = 0  # (both stores share one bucket handle here: count the executor's reads only)
    result = await executor.update(
        "jobrt0003", lambda r: r.model_copy(update={"reason": f"cancel_requested={r.cancel_requested}"})
    )
    assert result is not None
    assert result[1].reason == "cancel_requested=True"  # the write landed on the stored record
    assert reads.count == 1  # the failed CAS cost one read
    stored, _ = await other.get("jobrt0003")
    assert stored.reason == "cancel_requested=True" and stored.state == JobState.QUEUED


async def test_a_record_known_from_a_command_is_written_on_without_a_read(stores):
    """The scheduler's start command carries the record and its revision: the executor's store,
    told of it, writes on it without reading; an older copy never replaces a newer one."""
    scheduler, executor = stores
    now = datetime.now(UTC)
    record = lifecycle.new_record("jobrt0004", JobSpec(name="d", command=["true"]), now, None)
    await scheduler.create(record)
    result = await scheduler.update("jobrt0004", lambda r: lifecycle.advance(r, JobState.QUEUED, now))
    assert result is not None
    carried = scheduler.remembered("jobrt0004")
    assert carried is not None and carried[0] is result[1]

    stale = (record, carried[1] - 1)
    executor.remember(*carried)
    executor.remember(*stale)  # a redelivered older command: ignored
    assert executor.remembered("jobrt0004") == carried
    reads = Reads(executor)
    written = await executor.update("jobrt0004", lambda r: r.model_copy(update={"reason": "started"}))
    assert written is not None and written[0].state == JobState.QUEUED
    assert reads.count == 0
