"""The executor core's decisions against in-memory fakes: the real JobStore over a MemoryBucket,
MemoryPublisher and MemoryExecutorDirectory (``trainyard_shared.testing.fakes``) and a recording
log shipper (``trainyard_executor.fakes``): fast, no server. The same paths against a real nats-server are in
test_recovery.py, test_lost_ack_retry.py and the service tests; these guard the decisions alone."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from trainyard_contracts import CancelAttempt, JobRecord, JobSpec, JobState, StartAttempt, Subjects, lifecycle
from trainyard_contracts._time import utcnow
from trainyard_executor.backends.base import Resources
from trainyard_executor.backends.noop import NoopBackend
from trainyard_executor.core import ExecutorCore
from trainyard_executor.fakes import AppliedAtOnce, shippers
from trainyard_executor.settings import ExecutorSettings
from trainyard_shared.jobstore import JobStore
from trainyard_shared.testing.fakes import MemoryBucket, MemoryExecutorDirectory, MemoryPublisher

pytestmark = pytest.mark.unit

ME = "exec-a"
NOW = utcnow()


class Records:
    """The jobs bucket in memory, the real JobStore over it, and what was written there."""

    def __init__(self, *records: JobRecord) -> None:
        self.bucket = MemoryBucket("jobs")
        for r in records:  # stored as the scheduler's writes left them
            value = r.model_dump_json().encode()
            self.bucket.entries[r.job_id] = MemoryBucket.Entry("jobs", r.job_id, value, 1, 0, None, None)
        self.store = JobStore(self.bucket)

    def record(self, job_id: str) -> JobRecord:
        return JobRecord.model_validate_json(self.bucket.entries[job_id].value)

    @property
    def writes(self) -> int:
        return self.bucket.revision  # the fake counts its writes from 0


def types(events: MemoryPublisher) -> list[str]:
    return [json.loads(p.payload)["type"] for p in events.published]


def start(store: Records, job_id: str, attempt: int = 1, executor_id: str = ME) -> StartAttempt:
    """The start command as the scheduler sends it (the spec travels inside the record)."""
    return StartAttempt(job_id=job_id, attempt=attempt, executor_id=executor_id, record=store.record(job_id))


def placed_on(executor_id: str, job_id: str, *, started: bool = False, retries: int = 0) -> JobRecord:
    spec = JobSpec(name="decided", command=["true"], retries={"limit": retries, "backoff": 5})
    record = lifecycle.advance(lifecycle.new_record(job_id, spec, NOW, None), JobState.QUEUED, NOW)
    scheduled = lifecycle.schedule(record, executor_id, NOW)
    return lifecycle.start(scheduled, NOW) if started else scheduled


def core_with(store: Records, tmp_path: Path) -> tuple[ExecutorCore, MemoryPublisher, dict[Any, Any]]:
    made, factory = shippers()
    events = MemoryPublisher(Subjects())
    core = ExecutorCore(
        store=store.store,
        reports=AppliedAtOnce(store.store, events),  # the scheduler's rule applies each report
        directory=MemoryExecutorDirectory(),
        backend=NoopBackend(Resources(cpu=4, memory_mb=1024, gpu=0)),
        shippers=factory,
        settings=ExecutorSettings(id=ME, backend="noop"),
        work_root=tmp_path / "work",
    )
    return core, events, made


async def test_a_restart_leaves_a_placed_attempt_to_its_command_and_requeues_a_lost_one(tmp_path) -> None:
    store = Records(placed_on(ME, "placed"), placed_on(ME, "lost", started=True))
    core, events, _ = core_with(store, tmp_path)
    assert await core.recover([store.record("placed"), store.record("lost")]) == 1
    assert (store.record("placed").state, store.record("placed").attempt) == (JobState.SCHEDULED, 1)
    assert (store.record("lost").state, store.record("lost").attempt) == (JobState.REQUEUED, 2)
    assert types(events) == ["requeued"]
    assert core.recovered.is_set()  # commands wait for it


async def test_a_start_runs_the_attempt_and_records_its_end(tmp_path) -> None:
    store = Records(placed_on(ME, "j1"))
    core, events, made = core_with(store, tmp_path)
    core.recovered.set()
    await core.start(start(store, "j1"))
    task = core.running["j1"].task
    assert task is not None
    await task
    assert store.record("j1").state == JobState.SUCCEEDED
    assert types(events) == ["running", "succeeded"]
    assert made[("j1", 1)].closed and "j1" not in core.running
    # a redelivered start of an attempt that ended changes nothing
    await core.start(start(store, "j1"))
    assert "j1" not in core.running and types(events) == ["running", "succeeded"]


async def test_a_start_meant_for_another_executor_or_attempt_writes_nothing(tmp_path) -> None:
    store = Records(placed_on("exec-b", "theirs"), placed_on(ME, "mine"))
    core, events, _ = core_with(store, tmp_path)
    core.recovered.set()
    await core.start(start(store, "theirs", executor_id="exec-b"))  # not addressed here
    await core.start(start(store, "theirs"))  # the record says exec-b
    await core.start(start(store, "mine", attempt=2))  # not the current attempt
    assert store.writes == 0 and events.published == [] and core.running == {}


async def test_a_cancel_of_an_attempt_not_started_yet_cancels_it_in_the_record(tmp_path) -> None:
    store = Records(placed_on(ME, "j1"), placed_on("exec-b", "j2"))
    core, events, _ = core_with(store, tmp_path)
    core.recovered.set()
    await core.cancel(CancelAttempt(job_id="j1", attempt=1, executor_id=ME, reason="by the user"))
    assert (store.record("j1").state, store.record("j1").reason) == (JobState.CANCELLED, "by the user")
    assert types(events) == ["cancelled"]
    # fenced: an attempt placed elsewhere is not this executor's to cancel
    await core.cancel(CancelAttempt(job_id="j2", attempt=1, executor_id=ME))
    assert store.record("j2").state == JobState.SCHEDULED and types(events) == ["cancelled"]


async def test_a_failure_with_a_retry_left_is_requeued_and_one_without_fails_the_job(tmp_path) -> None:
    store = Records(placed_on(ME, "retried", started=True, retries=1), placed_on(ME, "final", started=True))
    core, events, _ = core_with(store, tmp_path)
    await core._finish("retried", 1, "failed", 3, "exit code 3", None, 1.0)
    await core._finish("final", 1, "failed", 3, "exit code 3", None, 1.0)
    retried, final = store.record("retried"), store.record("final")
    assert (retried.state, retried.attempt) == (JobState.REQUEUED, 2)
    assert final.state == JobState.FAILED
    assert types(events) == ["requeued", "failed"]
    # reported again (a lost publish ack made it send once more): applied twice is a no-op, and
    # its event, on the stream already, is not announced again
    reports = core.reports
    assert isinstance(reports, AppliedAtOnce)
    await reports.applier.apply(reports.sent[-1])
    assert store.record("final") == final and types(events) == ["requeued", "failed"]
    # redelivered to the scheduler after it died between its write and the event (here: the
    # event taken off the stream): the event is announced as it would have been
    events.published.pop()
    await reports.applier.apply(reports.sent[-1])
    assert store.record("final") == final and types(events) == ["requeued", "failed"]
    assert json.loads(events.published[-1].payload)["job_id"] == "final"


def stall_before_spawn(core: Any, on_stall: Callable[[str], Awaitable[None]]) -> list[str]:
    """Make the start stall at its last step before the spawn: ``on_stall(job_id)`` runs there
    (after the start's "starting on" line). Returns the jobs the backend was then asked to spawn."""
    spawned: list[str] = []
    real_start, make_shipper = core.backend.start, core.shippers

    async def spawn(launch: Any, on_line: Any) -> Any:
        spawned.append(launch.job_id)
        return await real_start(launch, on_line)

    def stalling_shipper(job_id: str, attempt: int) -> Any:
        shipper = make_shipper(job_id, attempt)
        say = shipper.system

        async def system(text: str) -> None:
            await say(text)
            if "starting on" in text:
                await on_stall(job_id)

        shipper.system = system
        return shipper

    core.backend.start = spawn
    core.shippers = stalling_shipper
    return spawned


async def start_to_its_end(core: Any, store: Records, job_id: str) -> None:
    core.recovered.set()
    await core.start(start(store, job_id))
    task = core.running[job_id].task
    assert task is not None
    await task


async def test_a_stalled_start_with_its_lease_held_throughout_spawns_without_reading_its_record(
    tmp_path,
) -> None:
    """A start that queued longer than a heartbeat (a drain) while the executor renewed its lease
    all along: nothing can have been given away for a lost executor, so it spawns without a read."""
    store = Records(placed_on(ME, "j1"))
    core, _events, _made = core_with(store, tmp_path)
    reads: list[str] = []
    real_get = core.store.get

    async def get(job_id: str) -> Any:
        reads.append(job_id)
        return await real_get(job_id)

    async def queued_long(job_id: str) -> None:
        local = core.running[job_id]
        local.started -= 3600
        # and the lease renewed all along meanwhile (the renewals themselves elided)
        core.lease.held_since, core.lease.last_asked = local.started - 1, time.monotonic()
        core.store.get = get  # type: ignore[method-assign]

    spawned = stall_before_spawn(core, queued_long)
    await start_to_its_end(core, store, "j1")
    assert spawned == ["j1"] and reads == []


async def test_a_stalled_start_spawns_nothing_when_its_attempt_was_given_away(tmp_path) -> None:
    """The chaos run's frozen executor (SIGSTOP between the record saying "running here" and the
    spawn): meanwhile its lease lapsed and the scheduler requeued the attempt (its process may
    still run: ``stopping``). After the thaw the start must not spawn: the work would run twice."""
    store = Records(placed_on(ME, "j1"))
    core, events, made = core_with(store, tmp_path)

    async def frozen(job_id: str) -> None:
        core.running[job_id].started -= 3600
        # what the scheduler wrote while this executor was away
        await store.store.update(
            job_id,
            lambda r: lifecycle.requeue(
                r, utcnow(), reason="executor lost", counts_as_retry=False, stopping=True
            ),
        )

    spawned = stall_before_spawn(core, frozen)
    await start_to_its_end(core, store, "j1")
    assert spawned == []
    record = store.record("j1")
    assert (record.state, record.attempt) == (JobState.REQUEUED, 2)
    assert not record.attempts[0].stopping  # told: nothing of attempt 1 runs here
    assert types(events) == ["running"]
    assert any("not started" in text for _, text in made[("j1", 1)].lines)
