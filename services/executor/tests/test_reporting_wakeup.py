"""The scheduler's word that a report is applied wakes the executor's read of the record.

A start runs only once the record says so (the scheduler writes it from the executor's report);
the executor reads the record again when the scheduler says it applied the report
(``exec-applied.<id>``), so a start waits one hop, not the next read of a doubling pause. The
pauses here are an hour: only the word can end these waits in time.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from faststream.nats import NatsBroker

from trainyard_contracts import JobRecord, JobSpec, JobState, Subjects, lifecycle, new_job_id
from trainyard_contracts._time import utcnow
from trainyard_contracts.reports import ExecutorReport
from trainyard_executor import reporting
from trainyard_executor.outcomes import start_verdict
from trainyard_executor.reporting import BusReporter
from trainyard_shared import appliedword
from trainyard_shared.jobstore import JobStore
from trainyard_shared.natshandle import NatsHandle
from trainyard_shared.reports import ReportApplier
from trainyard_shared.testing.fakes import MemoryBucket, MemoryPublisher
from trainyard_shared.testing.helpers import eventually

ME = "exec-a"


def scheduled_record(job_id: str = "j1"):
    now = utcnow()
    spec = JobSpec(name="woken", command=["true"])
    queued = lifecycle.advance(lifecycle.new_record(job_id, spec, now, None), JobState.QUEUED, now)
    return lifecycle.schedule(queued, ME, now)


async def waiting(reporter: BusReporter, job_id: str) -> bool:
    return job_id in reporter._readers


@pytest.mark.unit
async def test_the_applied_word_ends_the_wait_for_a_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reporting, "FIRST_READ_SECONDS", 3600.0)
    bucket = MemoryBucket("jobs")
    record = scheduled_record()
    await bucket.put(record.job_id, record.model_dump_json().encode())
    reporter = BusReporter(None, Subjects("t"), JobStore(bucket))  # type: ignore[arg-type]
    settled = asyncio.create_task(reporter.settle(record.job_id, start_verdict(ME, 1), timeout=60))
    await eventually(lambda: waiting(reporter, record.job_id), 10, "the start waiting on its record")

    started = lifecycle.start(record, utcnow() + timedelta(milliseconds=1))
    await bucket.put(record.job_id, started.model_dump_json().encode())
    reporter.applied("another-job")  # a word about another job wakes nobody here
    reporter.applied(record.job_id)

    verdict, seen = await asyncio.wait_for(settled, 30)
    assert verdict == "run" and seen is not None and seen.state == JobState.RUNNING
    assert reporter._readers == {}  # nobody left listening


@pytest.mark.unit
async def test_a_word_before_the_change_is_read_is_not_taken_for_the_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Woken while the record does not decide yet (another report of the job applied), the reader
    reads, finds nothing decided and waits on; the next word finds the start."""
    monkeypatch.setattr(reporting, "FIRST_READ_SECONDS", 3600.0)
    bucket = MemoryBucket("jobs")
    record = scheduled_record()
    await bucket.put(record.job_id, record.model_dump_json().encode())
    reads = 0
    real_get = JobStore.get

    async def counted(self: JobStore, job_id: str):  # type: ignore[no-untyped-def]
        nonlocal reads
        reads += 1
        return await real_get(self, job_id)

    monkeypatch.setattr(JobStore, "get", counted)
    reporter = BusReporter(None, Subjects("t"), JobStore(bucket))  # type: ignore[arg-type]
    settled = asyncio.create_task(reporter.settle(record.job_id, start_verdict(ME, 1), timeout=60))
    await eventually(lambda: waiting(reporter, record.job_id), 10, "the start waiting on its record")
    reporter.applied(record.job_id)

    async def read_again() -> bool:
        return reads >= 2

    await eventually(read_again, 10, "a second read after the first word")
    assert not settled.done()
    await bucket.put(record.job_id, lifecycle.start(record, utcnow()).model_dump_json().encode())
    reporter.applied(record.job_id)
    verdict, _ = await asyncio.wait_for(settled, 30)
    assert verdict == "run"


# -- the word carries the record (issue 23): a real nats-server, the scheduler's own applier --------


class CountedStore(JobStore):
    """The real store, counting its reads of the bucket."""

    reads = 0

    async def get(self, job_id: str):  # type: ignore[no-untyped-def]
        self.reads += 1
        return await super().get(job_id)


@pytest.fixture
async def wired(nats_server, prefix: str, indexed_jobs, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The scheduler's side (its store of the declared jobs bucket, an applier that says each
    report's outcome on exec-applied) and the executor's (its own connection, a reporter over a
    counting store): (reporter, store, applier). The pauses are an hour: only a word ends a wait."""
    monkeypatch.setattr(reporting, "FIRST_READ_SECONDS", 3600.0)
    index, scheduler_store = indexed_jobs

    async def tell(report: ExecutorReport, known: tuple[JobRecord, int] | None) -> None:
        await appliedword.publish(
            index.nc, index.subjects.exec_applied(report.executor_id), report.job_id, known
        )

    applier = ReportApplier(scheduler_store, MemoryPublisher(), notify=tell)
    broker = NatsBroker(nats_server.url)
    async with broker:
        await broker.start()
        store = CountedStore(scheduler_store.kv)
        reporter = BusReporter(broker, Subjects(prefix), store)
        await reporter.listen(ME)
        yield reporter, store, applier


def start_report(record: JobRecord) -> ExecutorReport:
    return ExecutorReport(
        kind="start", job_id=record.job_id, executor_id=ME, attempt=record.attempt, time=utcnow()
    )


async def placed(applier: ReportApplier, store: JobStore) -> JobRecord:
    """A queued record (revision 1), then scheduled on ME (revision 2), as the executor's start
    command carries it (remembered by the executor's store)."""
    now = utcnow()
    queued = lifecycle.advance(
        lifecycle.new_record(new_job_id(), JobSpec(name="carried", command=["true"]), now, None),
        JobState.QUEUED,
        now,
    )
    await applier.store.create(queued)
    changed = await applier.store.update(queued.job_id, lambda r: lifecycle.schedule(r, ME, now))
    assert changed is not None
    scheduled = applier.store.known(queued.job_id)
    assert scheduled is not None and scheduled[1] == 2
    store.remember(*scheduled)
    return scheduled[0]


async def start_waiting(reporter: BusReporter, record: JobRecord) -> asyncio.Task[Any]:
    """The executor's wait for its start of ``record`` (its report sent)."""
    settled = asyncio.create_task(reporter.settle(record.job_id, start_verdict(ME, 1), timeout=60))
    await eventually(lambda: waiting(reporter, record.job_id), 10, "the start waiting on its record")
    return settled


@pytest.mark.service
async def test_a_carried_word_settles_a_start_without_reading_the_record(wired) -> None:  # type: ignore[no-untyped-def]
    reporter, store, applier = wired
    settled = await start_waiting(reporter, record := await placed(applier, store))

    assert await applier.apply(start_report(record)) is not None
    verdict, seen = await asyncio.wait_for(settled, 30)
    assert verdict == "run" and seen is not None and seen.state == JobState.RUNNING
    assert store.reads == 0
    remembered = store.remembered(record.job_id)
    assert remembered is not None and remembered[1] == 3  # the next compare-and-set tries it


@pytest.mark.service
async def test_a_late_word_with_an_older_record_gives_no_verdict(wired) -> None:  # type: ignore[no-untyped-def]
    """A word of revision 1 (queued: to a start of attempt 1 that record says "gone") reaches a
    settle that knew revision 2: it is not decided on; the key is read, and the start's own word
    decides."""
    reporter, store, applier = wired
    record = await placed(applier, store)
    found = await JobStore(applier.store.kv).kv.get(record.job_id, revision=1)
    assert found.value is not None
    queued = JobRecord.model_validate_json(found.value)
    assert start_verdict(ME, 1)(queued) == ("gone", queued)  # what a wrong verdict would be
    settled = await start_waiting(reporter, record)
    subject = reporter.subjects.exec_applied(ME)
    await appliedword.publish(NatsHandle(reporter.broker).client, subject, record.job_id, (queued, 1))

    async def read_once() -> bool:
        return store.reads >= 1

    await eventually(read_once, 10, "a read after the stale word")
    assert not settled.done()
    assert await applier.apply(start_report(record)) is not None
    verdict, _ = await asyncio.wait_for(settled, 30)
    assert verdict == "run" and store.reads == 1


@pytest.mark.service
async def test_the_bare_job_id_word_of_an_older_scheduler_still_wakes_a_read(wired) -> None:  # type: ignore[no-untyped-def]
    reporter, store, applier = wired
    settled = await start_waiting(reporter, record := await placed(applier, store))
    old_applier = ReportApplier(applier.store, MemoryPublisher())  # writes, says nothing
    assert await old_applier.apply(start_report(record)) is not None
    await NatsHandle(reporter.broker).client.publish(
        reporter.subjects.exec_applied(ME), record.job_id.encode()
    )
    verdict, _ = await asyncio.wait_for(settled, 30)
    assert verdict == "run" and store.reads == 1


@pytest.mark.service
async def test_a_word_heard_before_its_settle_began_is_kept_for_it(wired) -> None:  # type: ignore[no-untyped-def]
    """The word can outrun the stream's acknowledgement of the report."""
    reporter, store, applier = wired
    record = await placed(applier, store)
    assert await applier.apply(start_report(record)) is not None

    async def heard() -> bool:
        return record.job_id in reporter._early

    await eventually(heard, 10, "the word heard while nobody waited")
    verdict, _ = await asyncio.wait_for(reporter.settle(record.job_id, start_verdict(ME, 1), timeout=60), 30)
    assert verdict == "run" and store.reads == 0
