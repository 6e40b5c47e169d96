"""An attempt that failed with a retry left, whose outcome write landed but whose ack was lost.

The executor's compare-and-set requeues the record (state requeued, attempt + 1); if NATS dies
between storing it and answering, the executor's retry finds the record no longer its own. It must
still publish the ``requeued`` event that write owes (same message id, so the stream keeps one),
and only when the record's history shows that very write: never for a requeue by the scheduler
(executor lost, preempted).

The service tests run the executor core against a real nats-server. The lost ack is made by the
jobs bucket's client (``AckLostOnce``): its first update is stored by the server, then the client
raises the timeout a killed server gives, before the answer reaches the store. Killing the server
at exactly that instant cannot be arranged from a test; this is the same state on both sides.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import nats.errors
import pytest

from trainyard_contracts import JobRecord, JobSpec, JobState, Subjects, lifecycle, new_job_id
from trainyard_contracts._time import utcnow
from trainyard_executor.backends.base import Resources
from trainyard_executor.backends.noop import NoopBackend
from trainyard_executor.core import ExecutorCore
from trainyard_executor.outcomes import conclude, event_for
from trainyard_executor.recording import requeued_here
from trainyard_executor.settings import ExecutorSettings
from trainyard_shared.binding import connect_and_bind
from trainyard_shared.broker import make_broker
from trainyard_shared.executors import ExecutorDirectory
from trainyard_shared.jobstore import JobStore
from trainyard_shared.publishing import EventPublisher
from trainyard_shared.settings import CommonSettings
from trainyard_shared.testing.helpers import Bus

ME = "exec-a"
NOW = utcnow()


def running_here(retries: int = 2, job_id: str = "j1") -> JobRecord:
    spec = JobSpec(name="flaky", command=["false"], retries={"limit": retries, "backoff": 5})
    record = lifecycle.advance(lifecycle.new_record(job_id, spec, NOW, None), JobState.QUEUED, NOW)
    return lifecycle.start(lifecycle.schedule(record, ME, NOW), NOW)


def failed_here(record: JobRecord, now=NOW) -> JobRecord:  # type: ignore[no-untyped-def]
    return conclude(record, "failed", exit_code=3, reason="exit code 3", outputs_uri=None, now=now)


def stored(record: JobRecord) -> JobRecord:
    """The record as the next reader gets it back from the bucket."""
    return JobRecord.model_validate_json(record.model_dump_json())


# -- the predicate -----------------------------------------------------------------------------


@pytest.mark.unit
def test_a_landed_retry_write_is_recognised_also_after_the_next_attempt_moved_on() -> None:
    written = failed_here(running_here())
    assert written.state == JobState.REQUEUED and written.attempt == 2
    assert requeued_here(stored(written), written, 1)
    # the scheduler already placed attempt 2 elsewhere: attempt 1's entry is history, unchanged
    later = lifecycle.schedule(stored(written), "exec-b", NOW + timedelta(seconds=9))
    assert requeued_here(later, written, 1)


@pytest.mark.unit
def test_a_requeue_by_anyone_else_is_not_taken_for_ours_even_at_the_same_instant() -> None:
    record = running_here()
    written = failed_here(record)
    lost = lifecycle.requeue(
        record, NOW, reason="executor_lost", counts_as_retry=False, detail=f"executor {ME} stopped"
    )
    preempted = lifecycle.requeue(record, NOW, reason="preempted", counts_as_retry=False, detail="preempted")
    assert not requeued_here(stored(lost), written, 1)
    assert not requeued_here(stored(preempted), written, 1)
    # our own retry at another instant (a second _finish) is not this write either
    again = failed_here(record, NOW + timedelta(microseconds=1))
    assert not requeued_here(stored(again), written, 1)


@pytest.mark.unit
def test_a_write_that_did_not_land_or_was_not_a_retry_is_not_a_requeue_here() -> None:
    record = running_here()
    written = failed_here(record)
    assert not requeued_here(stored(record), written, 1)  # the record still shows attempt 1 running
    final = failed_here(running_here(retries=0))
    assert final.state == JobState.FAILED
    assert not requeued_here(stored(final), final, 1)  # terminal: ended_here's case, not this one
    assert not requeued_here(stored(written), written, 2)  # another attempt's write


# -- the executor against a real nats-server ---------------------------------------------------


class AckLostOnce:
    """The jobs bucket, except that the first update is stored and its answer never arrives.
    ``before_first_update`` runs instead when set: another party writes first (our CAS then loses)."""

    def __init__(self, kv: Any, before_first_update: Any = None) -> None:
        self._kv = kv
        self._before = before_first_update
        self.updates = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kv, name)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        self.updates += 1
        if self.updates > 1:
            return await self._kv.update(key, value, last=last)
        if self._before is not None:
            await self._before()
            return await self._kv.update(key, value, last=last)
        await self._kv.update(key, value, last=last)
        raise nats.errors.TimeoutError  # what the client sees when the server dies before answering


async def finish_with_lost_ack(
    url: str, prefix: str, work: Path, record: JobRecord, before_first_update: Any = None
) -> tuple[JobRecord | None, list[Any], JobRecord | None]:
    """Store ``record``, let the executor record a failure of its attempt through ``AckLostOnce``;
    return what ``_finish`` returned, the job's events and the stored record."""
    sb = make_broker(CommonSettings(nats_url=url, prefix=prefix), "executor")
    common = CommonSettings(nats_url=url, prefix=prefix, data_dir=work)
    buckets = await connect_and_bind(sb, common)
    try:
        await buckets.jobs.create(record.job_id, record.model_dump_json().encode())
        kv = AckLostOnce(buckets.jobs, before_first_update)
        core = ExecutorCore(
            store=JobStore(kv),  # type: ignore[arg-type]
            events=EventPublisher(sb.broker, sb.subjects),
            directory=ExecutorDirectory(buckets.executors),
            backend=NoopBackend(Resources(cpu=4, memory_mb=1024, gpu=0)),
            shippers=lambda job_id, attempt: None,  # type: ignore[arg-type,return-value]  # _finish ships none
            settings=ExecutorSettings(id=ME, backend="noop", broker_outage_seconds=10),
            work_root=work / "work",
        )
        returned = await core._finish(record.job_id, 1, "failed", 3, "exit code 3", None, 1.5)
        assert kv.updates >= 1, "the executor never tried its write"
        async with Bus(url, prefix) as bus:
            events = await bus.messages(
                Subjects(prefix).job_events(record.job_id), Subjects(prefix).streams.jobs
            )
            now_stored = await bus.record(record.job_id)
        return returned, events, now_stored
    finally:
        await sb.broker.stop()


@pytest.mark.service
async def test_a_retry_whose_ack_was_lost_is_announced_once_with_its_own_message_id(
    nats_server, prefix, tmp_path
) -> None:
    record = running_here(job_id=new_job_id())
    returned, events, now_stored = await finish_with_lost_ack(nats_server.url, prefix, tmp_path, record)
    assert now_stored is not None and now_stored.state == JobState.REQUEUED and now_stored.attempt == 2
    assert returned is not None and returned.state == JobState.REQUEUED
    assert [json.loads(m.data)["type"] for m in events] == ["requeued"]
    message = events[0]
    assert message.headers["Nats-Msg-Id"] == f"{record.job_id}:1:requeued"
    # the event the write would have announced had its ack arrived
    expected = event_for(record, now_stored, 1.5)
    got = json.loads(message.data)
    for field in ("job_id", "attempt", "reason", "next_attempt", "detail"):
        assert got[field] == getattr(expected, field), field
    assert got["next_attempt"] == 2 and got["reason"] == "retry" and got["detail"] == "exit code 3"
    # the retry's backoff, as the landed write stored it
    assert now_stored.not_before is not None and got["not_before"] is not None
    assert datetime.fromisoformat(got["not_before"]) == now_stored.not_before


@pytest.mark.service
async def test_a_requeue_by_the_scheduler_before_our_write_announces_nothing(
    nats_server, prefix, tmp_path
) -> None:
    """The scheduler found the executor lost and requeued the attempt between the executor's read
    and its compare-and-set: the executor's write loses, and the requeue is not its to announce
    (the scheduler publishes its own executor_lost event)."""
    record = running_here(job_id=new_job_id())
    url = nats_server.url

    async def scheduler_requeues() -> None:
        async with Bus(url, prefix) as bus:
            kv = await bus.js.key_value(bus.subjects.buckets.jobs)
            entry = await kv.get(record.job_id)
            current = JobRecord.model_validate_json(entry.value)
            lost = lifecycle.requeue(
                current, utcnow(), reason="executor_lost", counts_as_retry=False, detail="lost"
            )
            await kv.update(record.job_id, lost.model_dump_json().encode(), last=entry.revision)

    returned, events, now_stored = await finish_with_lost_ack(
        url, prefix, tmp_path, record, before_first_update=scheduler_requeues
    )
    assert returned is None
    assert now_stored is not None and now_stored.attempt == 2 and now_stored.reason == "lost"
    assert events == []
