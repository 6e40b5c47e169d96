"""SchedulerCore's decisions on in-memory fakes (trainyard_shared.testing.fakes): no server.

The real job store runs over an in-memory bucket, so each decision is still a compare-and-set; the
publisher keeps what the core announces. What JetStream itself does (dedup, redelivery, watches) is
tested against a real nats-server in tests/integration.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from trainyard_contracts import (
    Capacity,
    ExecutorHeartbeat,
    JobRecord,
    JobSpec,
    JobState,
    StartAttempt,
    Subjects,
    lifecycle,
)
from trainyard_contracts._time import utcnow
from trainyard_scheduler.core import SchedulerCore
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_scheduler.unconfirmed import Unconfirmed
from trainyard_shared.testing.fakes import (
    MemoryCommandSender,
    MemoryExecutorDirectory,
    MemoryPublisher,
    memory_job_store,
)

pytestmark = pytest.mark.unit
SUBJECTS = Subjects("t")


class Scheduler:
    """A core wired to fakes, and what it announced."""

    def __init__(self, **settings: float) -> None:
        self.store, self.view = memory_job_store()
        self.events = MemoryPublisher(SUBJECTS)
        self.executors = MemoryExecutorDirectory()
        self.core = SchedulerCore(
            self.store,
            self.view,
            self.events,
            MemoryCommandSender(SUBJECTS),
            self.executors,
            SchedulerSettings(**settings),
        )

    async def online(self, executor_id: str, cpu: float = 4, memory: int = 8192) -> None:
        beat = ExecutorHeartbeat(
            executor_id=executor_id, backend="local", capacity=Capacity(cpu=cpu, memory=memory)
        )
        await self.executors.put(beat)

    async def submit(self, job_id: str, cpu: float = 1) -> None:
        spec = JobSpec(name=job_id, command=["true"], resources={"cpu": cpu, "memory": 256})
        await self.store.create(lifecycle.new_record(job_id, spec, utcnow(), None))

    async def state(self, job_id: str) -> JobState:
        found = await self.store.get(job_id)
        assert found is not None
        return found[0].state

    def announced(self) -> list[str]:
        return self.events.subjects_published()


async def test_a_pass_places_a_submitted_job_and_announces_it_in_order() -> None:
    s = Scheduler()
    await s.online("exec-a")
    await s.submit("j1")
    decided = await s.core.plan_pass()
    assert [(a.job_id, a.executor_id) for a in decided.assignments] == [("j1", "exec-a")]
    assert await s.state("j1") == JobState.SCHEDULED
    assert s.announced() == [
        "t.job.j1.submitted",
        "t.job.j1.queued",
        "t.job.j1.scheduled",
        "t.exec.exec-a.start",
    ]


async def test_a_job_that_fits_nowhere_is_queued_and_says_why() -> None:
    s = Scheduler()
    await s.online("exec-a", cpu=2)
    await s.submit("big", cpu=8)
    decided = await s.core.plan_pass()
    assert decided.assignments == ()
    assert await s.state("big") == JobState.QUEUED
    assert s.announced() == ["t.job.big.submitted", "t.job.big.queued"]
    answer = await s.core.why("big")
    assert answer.pending and answer.reason is not None and answer.reason.kind != "other"


async def test_a_pending_job_is_cancelled_and_a_running_one_gets_a_cancel_command() -> None:
    s = Scheduler()
    await s.online("exec-a")
    await s.submit("pending", cpu=8)
    await s.submit("placed")
    await s.core.plan_pass()
    s.events.published.clear()
    await s.core.cancel("pending", by="alice")
    await s.core.cancel("placed", by="alice")
    assert await s.state("pending") == JobState.CANCELLED
    assert await s.state("placed") == JobState.SCHEDULED  # its executor ends it and records that
    assert s.announced() == ["t.job.pending.cancelled", "t.exec.exec-a.cancel"]


async def test_an_announcement_that_fails_is_owed_and_published_when_due() -> None:
    s = Scheduler()
    clock = [0.0]
    s.core.unconfirmed = Unconfirmed(first_delay=1.0, clock=lambda: clock[0])
    await s.online("exec-a")
    await s.submit("j1")
    s.events.fail_next = 1
    await s.core.plan_pass()
    assert await s.state("j1") == JobState.SCHEDULED  # the write stands
    assert s.announced() == []
    assert await s.core.retry_unconfirmed() == 0  # not due yet
    clock[0] = 1.0
    assert await s.core.retry_unconfirmed() == 1
    assert s.announced() == [
        "t.job.j1.submitted",
        "t.job.j1.queued",
        "t.job.j1.scheduled",
        "t.exec.exec-a.start",
    ]


async def test_a_lost_executor_s_attempt_is_requeued_after_its_grace() -> None:
    s = Scheduler(lost_grace_seconds=0)
    await s.online("exec-a")
    await s.submit("j1")
    await s.core.plan_pass()
    await s.executors.remove("exec-a")
    s.events.published.clear()
    await s.core.reconcile()
    assert await s.state("j1") == JobState.REQUEUED
    assert s.announced() == ["t.job.j1.requeued", "t.exec.exec-a.cancel"]


async def test_no_lease_no_decision() -> None:
    s = Scheduler()
    s.core.may_assign = lambda: False
    await s.online("exec-a")
    await s.submit("j1")
    assert (await s.core.plan_pass()).assignments == ()
    assert await s.state("j1") == JobState.SUBMITTED
    assert s.announced() == []


def test_expired_heartbeats_are_not_online() -> None:
    beat = ExecutorHeartbeat(
        executor_id="old",
        backend="local",
        capacity=Capacity(cpu=1, memory=1),
        time=utcnow() - timedelta(minutes=5),
    )
    assert beat.expired(utcnow())


async def test_the_start_carries_the_record_the_scheduling_write_made() -> None:
    s = Scheduler()
    await s.online("exec-a")
    await s.submit("j1")
    await s.core.plan_pass()
    start = StartAttempt.model_validate_json(s.events.published[-1].payload)
    stored = await s.store.get("j1")
    assert stored is not None
    # the executor's first compare-and-set needs no read: the record and revision are the stored ones
    assert start.record == stored[0] and start.record_revision == stored[1]
    assert start.spec is None  # the spec travels once, inside the record


async def test_the_start_carries_the_record_when_the_watch_delivered_the_write_first() -> None:
    """The view's KV watch often hands it the scheduling write before the write's acknowledgement
    comes back: the view then holds an equal record parsed from the watch, not the object the
    write made. The start still carries the record (the executor's start needs no read)."""
    s = Scheduler()
    bucket, view = s.store.kv, s.view
    real_update = bucket.update

    async def watched_first(
        key: str, value: bytes, last: int | None = None, validate_keys: bool = True
    ) -> int:
        revision = await real_update(key, value, last, validate_keys)
        view.apply(JobRecord.model_validate_json(value), revision)  # what the watch delivers
        return revision

    bucket.update = watched_first  # type: ignore[method-assign]
    await s.online("exec-a")
    await s.submit("j1")
    await s.core.plan_pass()
    start = StartAttempt.model_validate_json(s.events.published[-1].payload)
    stored = await s.store.get("j1")
    assert stored is not None and stored[0].state == JobState.SCHEDULED
    assert start.record == stored[0] and start.record_revision == stored[1]
