"""The scheduler's word that a report is applied wakes the executor's read of the record.

A start runs only once the record says so (the scheduler writes it from the executor's report);
the executor reads the record again when the scheduler says it applied the report
(``exec-applied.<id>``), so a start waits one hop, not the next read of a doubling pause. The
pauses here are an hour: only the word can end these waits in time.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from trainyard_contracts import JobSpec, JobState, Subjects, lifecycle
from trainyard_contracts._time import utcnow
from trainyard_executor import reporting
from trainyard_executor.outcomes import start_verdict
from trainyard_executor.reporting import BusReporter
from trainyard_shared.jobstore import JobStore
from trainyard_shared.testing.fakes import MemoryBucket
from trainyard_shared.testing.helpers import eventually

pytestmark = pytest.mark.unit
ME = "exec-a"


def scheduled_record(job_id: str = "j1"):
    now = utcnow()
    spec = JobSpec(name="woken", command=["true"])
    queued = lifecycle.advance(lifecycle.new_record(job_id, spec, now, None), JobState.QUEUED, now)
    return lifecycle.schedule(queued, ME, now)


async def waiting(reporter: BusReporter, job_id: str) -> bool:
    return job_id in reporter._readers


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
