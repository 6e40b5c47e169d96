"""Executors report; the scheduler writes the record (trainyard_shared.reports).

The rule (``apply_report``) is the executor's own compare-and-set of before, moved: fenced on the
reporting executor and attempt; a stale executor's report changes nothing but the ``stopping``
mark of its own old attempt. ``ReportApplier`` writes it and announces the change; a report the
record shows applied already, whose event never reached the jobs stream (the scheduler died, or
its publish failed, between the two), is announced when it comes again, under the event's own
message id, and only then.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import nats.errors
import pytest
from faststream.nats import NatsBroker

from trainyard_contracts import JobRecord, JobSpec, JobState, lifecycle, new_job_id
from trainyard_contracts._time import utcnow
from trainyard_contracts.reports import ExecutorReport
from trainyard_shared.jobstore import JobStore
from trainyard_shared.provision import provision
from trainyard_shared.publishing import EventPublisher
from trainyard_shared.reports import ReportApplier, apply_report, events_of, owed_after_applied
from trainyard_shared.testing.fakes import MemoryBucket, MemoryPublisher
from trainyard_shared.testing.helpers import Bus

ME, OTHER = "exec-a", "exec-b"
NOW = utcnow()
LATER = NOW + timedelta(seconds=5)


def placed(executor: str = ME, *, started: bool = True, retries: int = 0, job_id: str = "j1") -> JobRecord:
    spec = JobSpec(name="reported", command=["true"], retries={"limit": retries, "backoff": 5})
    record = lifecycle.advance(lifecycle.new_record(job_id, spec, NOW, None), JobState.QUEUED, NOW)
    scheduled = lifecycle.schedule(record, executor, NOW)
    return lifecycle.start(scheduled, NOW) if started else scheduled


def report(
    kind: str, *, executor: str = ME, attempt: int = 1, job_id: str = "j1", **fields: Any
) -> ExecutorReport:
    return ExecutorReport(
        kind=kind,  # type: ignore[arg-type]
        job_id=job_id,
        attempt=attempt,
        executor_id=executor,
        time=LATER,
        **fields,
    )


def ended(outcome: str, exit_code: int | None = 0, **fields: Any) -> ExecutorReport:
    return report("end", outcome=outcome, exit_code=exit_code, reason=f"exit code {exit_code}", **fields)


# -- the rule ----------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.security
def test_a_report_about_another_executors_attempt_changes_nothing() -> None:
    theirs = placed(OTHER)
    for kind in ("start", "end", "handback", "cancelled", "stopped"):
        fields = {"outcome": "succeeded"} if kind == "end" else {}
        assert apply_report(theirs, report(kind, **fields)) is None, kind
    assert apply_report(placed(OTHER, started=False), report("start")) is None


@pytest.mark.unit
@pytest.mark.security
def test_a_stale_attempts_report_only_frees_the_room_its_own_old_attempt_held() -> None:
    current = placed(retries=1)
    # the scheduler preempted attempt 1 (its process may still run: stopping) and placed attempt 2
    preempted = lifecycle.requeue(
        current, NOW, reason="preempted", counts_as_retry=False, detail="preempted", stopping=True
    )
    again = lifecycle.schedule(preempted, OTHER, NOW)
    for stale in (ended("succeeded"), report("start"), report("cancelled"), report("handback")):
        after = apply_report(again, stale)
        if stale.kind in ("start", "cancelled"):
            assert after is None
            continue
        assert after is not None and after.state == again.state and after.attempt == 2
        assert after.executor_id == OTHER and after.spec == again.spec
        assert [a.stopping for a in after.attempts] == [False, False]
        assert apply_report(after, stale) is None  # applied twice: nothing more


@pytest.mark.unit
def test_each_report_moves_the_record_as_the_executors_own_write_did() -> None:
    started = apply_report(placed(started=False), report("start", workdir="/w"))
    assert started is not None and started.state == JobState.RUNNING
    assert events_of(placed(started=False), started, report("start", workdir="/w"))[0].type == "running"
    assert apply_report(started, report("start")) is None  # applied twice
    asked = placed(started=False).model_copy(update={"cancel_requested": True})
    cancelled = apply_report(asked, report("start"))
    assert cancelled is not None and cancelled.state == JobState.CANCELLED
    retried = apply_report(placed(retries=1), ended("failed", 3))
    assert retried is not None and (retried.state, retried.attempt, retried.retries_used) == (
        JobState.REQUEUED,
        2,
        1,
    )
    final = apply_report(placed(), ended("succeeded", outputs_uri="file:///o"))
    assert final is not None and final.state == JobState.SUCCEEDED and final.outputs_uri == "file:///o"
    handed = apply_report(placed(retries=1), report("handback", reason="shut down"))
    assert handed is not None and (handed.state, handed.retries_used) == (JobState.REQUEUED, 0)
    assert handed.reason == "shut down"
    before_start = apply_report(placed(started=False), report("cancelled", reason="by the user"))
    assert before_start is not None and before_start.state == JobState.CANCELLED
    assert apply_report(placed(), report("cancelled")) is None  # running: its cancel is a process's end


@pytest.mark.unit
def test_an_applied_report_is_recognised_also_after_the_next_attempt_moved_on() -> None:
    failed = ended("failed", 3)
    written = apply_report(placed(retries=2), failed)
    assert written is not None and written.state == JobState.REQUEUED
    [owed] = owed_after_applied(written, failed)
    assert (owed.type, owed.attempt, getattr(owed, "next_attempt", None)) == ("requeued", 1, 2)
    later = lifecycle.schedule(written, OTHER, LATER + timedelta(seconds=9))
    assert [e.type for e in owed_after_applied(later, failed)] == ["requeued"]
    # a requeue by anyone else, even at the same instant, is not this report's
    lost = lifecycle.requeue(placed(retries=2), LATER, reason="executor_lost", counts_as_retry=False)
    assert owed_after_applied(lost, failed) == []
    assert owed_after_applied(placed(retries=2), failed) == []  # not applied: nothing owed


# -- the scheduler's writer against a real nats-server -------------------------------------------


class AckLostOnce:
    """The jobs bucket, except that the first update is stored and its answer never arrives (the
    scheduler died, or NATS restarted, right after the write)."""

    def __init__(self, kv: Any) -> None:
        self._kv = kv
        self.updates = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kv, name)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        self.updates += 1
        revision = await self._kv.update(key, value, last=last)
        if self.updates == 1:
            raise nats.errors.TimeoutError
        return int(revision)


@pytest.mark.service
async def test_a_retry_whose_event_was_lost_is_announced_once_when_the_report_comes_again(
    nats_server, prefix
) -> None:
    record = placed(retries=2, job_id=new_job_id())
    failed = report("end", job_id=record.job_id, outcome="failed", exit_code=3, reason="exit code 3")
    async with Bus(nats_server.url, prefix) as bus:
        await provision(bus.js, bus.subjects)
        jobs = await bus.js.key_value(bus.subjects.buckets.jobs)
        await jobs.create(record.job_id, record.model_dump_json().encode())
        broker = NatsBroker(nats_server.url)
        await broker.connect()
        try:
            store = JobStore(AckLostOnce(jobs))
            applier = ReportApplier(store, EventPublisher(broker, bus.subjects))
            with pytest.raises(nats.errors.TimeoutError):
                await applier.apply(failed)  # written; its ack lost: the consumer redelivers
            assert await bus.event_types(record.job_id) == []
            await applier.apply(failed)  # redelivered
            await applier.apply(failed)  # and once more: the stream holds the event already
        finally:
            await broker.stop()
        now = await bus.record(record.job_id)
        events = await bus.messages(bus.subjects.job_events(record.job_id), bus.subjects.streams.jobs)
    assert now is not None and (now.state, now.attempt) == (JobState.REQUEUED, 2)
    assert [json.loads(m.data)["type"] for m in events] == ["requeued"]
    assert events[0].headers["Nats-Msg-Id"] == f"{record.job_id}:1:requeued"
    got = json.loads(events[0].data)
    assert (got["next_attempt"], got["reason"], got["detail"]) == (2, "retry", "exit code 3")


@pytest.mark.unit
@pytest.mark.security
async def test_a_stale_report_is_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    record = placed(retries=1)
    moved_on = lifecycle.schedule(
        lifecycle.requeue(record, NOW, reason="executor_lost", counts_as_retry=False), OTHER, NOW
    )
    bucket = MemoryBucket("jobs")
    bucket.entries[moved_on.job_id] = MemoryBucket.Entry(
        "jobs", moved_on.job_id, moved_on.model_dump_json().encode(), 1, 0, None, None
    )
    events = MemoryPublisher()
    applier = ReportApplier(JobStore(bucket), events)
    with caplog.at_level(logging.WARNING, logger="trainyard.reports"):
        assert await applier.apply(ended("succeeded")) is None
    assert bucket.revision == 0 and events.published == []  # nothing written, nothing announced
    dropped = [r for r in caplog.records if "dropped a report" in r.getMessage()]
    assert dropped and getattr(dropped[0], "executor_id", None) == ME


@pytest.mark.unit
async def test_the_reporting_executor_is_told_once_its_report_is_written_applied_or_not() -> None:
    """The executor waits on the record after a start report; the scheduler's word wakes it (the
    record still decides: a stale report's word makes it read that the attempt is not its own)."""
    record = placed(started=False)
    bucket = MemoryBucket("jobs")
    await bucket.put(record.job_id, record.model_dump_json().encode())
    told: list[tuple[str, str, int, str | None, int]] = []

    async def notify(got: ExecutorReport, known: tuple[JobRecord, int] | None) -> None:
        assert known is not None
        told.append((got.executor_id, got.job_id, got.attempt, known[0].state.value, known[1]))

    applier = ReportApplier(JobStore(bucket), MemoryPublisher(), notify=notify)
    assert await applier.apply(report("start")) is not None
    assert await applier.apply(report("start", executor=OTHER)) is None  # not OTHER's attempt
    # each word carries the record as written (or as it stands) and its revision
    assert told == [(ME, "j1", 1, "running", 2), (OTHER, "j1", 1, "running", 2)]


@pytest.mark.unit
async def test_a_word_that_cannot_be_sent_does_not_fail_the_report() -> None:
    record = placed(started=False)
    bucket = MemoryBucket("jobs")
    await bucket.put(record.job_id, record.model_dump_json().encode())

    async def broken(_: ExecutorReport, __: tuple[JobRecord, int] | None) -> None:
        raise nats.errors.ConnectionClosedError

    applier = ReportApplier(JobStore(bucket), MemoryPublisher(), notify=broken)
    applied = await applier.apply(report("start"))
    assert applied is not None and applied.state == JobState.RUNNING
