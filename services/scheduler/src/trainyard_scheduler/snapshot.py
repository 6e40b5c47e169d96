"""What the policy decides on, built from job records and executor heartbeats (pure, no I/O).

An attempt an executor still runs although its record moved on (a preempted or superseded attempt
inside its grace period) still holds its room as an ``ending`` job: from the record while it is
marked ``stopping`` (even before a heartbeat lists it), and from the executor's heartbeat until the
record says it ended (room.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from trainyard_contracts import JobRecord, JobSpec, JobState, QueueConfig
from trainyard_contracts.records import ExecutorHeartbeat
from trainyard_scheduler.policy import Demand, ExecutorFree, PendingJob, RunningJob, Snapshot
from trainyard_scheduler.room import attempt_ended, stopping_attempts


class AttemptOn(NamedTuple):
    """One attempt of a job on one executor (a split gang has one per member executor)."""

    job_id: str
    attempt: int
    executor_id: str


def awaits_placement(record: JobRecord) -> bool:
    """Pending for the planner: queued or requeued, or just submitted (the pass that first sees a
    submitted job queues it, or queues and schedules it in one write)."""
    return (record.state.pending or record.state == JobState.SUBMITTED) and not record.cancel_requested


def demand_of(record: JobRecord) -> Demand:
    r = record.spec.resources
    return Demand(cpu=r.cpu, memory=r.memory, gpu=r.gpu)


@dataclass
class RoomLedger:
    """The one accounting helper: what each online executor's attempts hold (room and GPUs)."""

    online: Mapping[str, ExecutorHeartbeat]
    used: dict[str, Demand] = field(default_factory=dict)
    held_gpus: dict[str, set[int]] = field(default_factory=dict)
    counted: set[AttemptOn] = field(default_factory=set)
    running: list[RunningJob] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.used = {eid: Demand(0.0, 0, 0) for eid in self.online}
        self.held_gpus = {eid: set() for eid in self.online}

    def hold(self, record: JobRecord, at: AttemptOn, replicas: int) -> Demand:
        """Count ``replicas`` of the job's demand and its devices as held on ``at.executor_id``."""
        self.held_gpus[at.executor_id].update(record.gpu_devices(at.attempt, at.executor_id))
        d = demand_of(record).times(replicas)
        self.used[at.executor_id] = self.used[at.executor_id].plus(d)
        self.counted.add(at)
        return d

    def free(self) -> tuple[ExecutorFree, ...]:
        executors = []
        for eid, beat in sorted(self.online.items()):
            if beat.draining:  # shutting down: its running rows stay, it gets no room to fill
                executors.append(ExecutorFree(eid, Demand(0.0, 0, 0)))
                continue
            cap, u = beat.capacity, self.used[eid]
            executors.append(
                ExecutorFree(eid, Demand(cap.cpu - u.cpu, cap.memory - u.memory, cap.gpu - u.gpu))
            )
        return tuple(executors)


@dataclass(frozen=True)
class Observed:
    """A snapshot for the policy, and the GPU indices live attempts hold on each executor."""

    snapshot: Snapshot
    held_gpus: dict[str, set[int]]


def _running(ledger: RoomLedger, record: JobRecord, executor_id: str, replicas: int, now: datetime) -> None:
    spec = record.spec
    d = ledger.hold(record, AttemptOn(record.job_id, record.attempt, executor_id), replicas)
    since = record.state_times.get("running") or record.state_times.get("scheduled") or now
    ledger.running.append(
        RunningJob(
            job_id=record.job_id,
            attempt=record.attempt,
            executor_id=executor_id,
            used=d,
            queue=spec.queue,
            priority=spec.priority,
            preemptible=spec.preemptible,
            started_at=since.timestamp(),
            timeout=spec.timeout,
            ending=record.cancel_requested,
        )
    )


def _ending(ledger: RoomLedger, record: JobRecord, at: AttemptOn, replicas: int) -> None:
    d = ledger.hold(record, at, replicas)
    ledger.running.append(
        RunningJob(
            job_id=record.job_id,
            attempt=at.attempt,
            executor_id=at.executor_id,
            used=d,
            queue=record.spec.queue,
            priority=record.spec.priority,
            ending=True,
        )
    )


def pending_job(
    job_id: str, spec: JobSpec, submitted_at: float, attempt: int = 1, not_before: float | None = None
) -> PendingJob:
    """What the policy sees of a spec awaiting placement; the dry run's probe is built here too, so
    it meets the same quotas, gangs and timeouts as a submitted job."""
    r = spec.resources
    return PendingJob(
        job_id=job_id,
        attempt=attempt,
        priority=spec.priority,
        submitted_at=submitted_at,
        demand=Demand(cpu=r.cpu, memory=r.memory, gpu=r.gpu),
        replicas=spec.replicas,
        not_before=not_before,
        queue=spec.queue,
        timeout=spec.timeout,
    )


def _pending(record: JobRecord) -> PendingJob:
    not_before = record.not_before.timestamp() if record.not_before else None
    submitted_at = record.submitted_at.timestamp()
    return pending_job(record.job_id, record.spec, submitted_at, record.attempt, not_before)


def _count_record(
    ledger: RoomLedger, record: JobRecord, now: datetime, stopping_hold: float
) -> PendingJob | None:
    """Count what one unfinished record holds; the pending job it is, if it awaits placement."""
    online = ledger.online
    if record.attempt > 1:  # an earlier attempt the scheduler stopped may still run
        for attempt, eid in stopping_attempts(record, now, stopping_hold):
            at = AttemptOn(record.job_id, attempt, eid)
            if eid in online and at not in ledger.counted:
                _ending(ledger, record, at, record.spec.replicas)
    gang = record.split_gang() if record.gang is not None else None
    if record.state.active and gang is not None:
        # one row per member executor, with its ranks' room, until its ranks have ended
        for member in gang.members:
            if member.executor_id in online:
                if member.state is None:
                    _running(ledger, record, member.executor_id, len(member.ranks), now)
                else:
                    ledger.counted.add(AttemptOn(record.job_id, record.attempt, member.executor_id))
    elif record.state.active and record.executor_id is not None and record.executor_id in online:
        _running(ledger, record, record.executor_id, record.spec.replicas, now)
    elif awaits_placement(record):
        return _pending(record)
    return None


def _count_heartbeats(ledger: RoomLedger, lookup: Callable[[str], JobRecord | None]) -> None:
    """Attempts the executors report that no record counted yet: ending ones, until the record
    says they ended."""
    for eid, beat in ledger.online.items():
        for ref in beat.running:
            at = AttemptOn(ref.job_id, ref.attempt, eid)
            if at in ledger.counted:
                continue
            record = lookup(ref.job_id)
            if record is None or attempt_ended(record, ref.attempt, eid):
                continue  # the record says it ended: its room is free before the next beat
            # a member of a split gang holds its ranks' room; otherwise (the placement of that
            # attempt replaced already) the whole gang's, which over-counts for a moment only
            gang = record.gang
            member = gang.member(eid) if gang is not None and gang.attempt == ref.attempt else None
            _ending(ledger, record, at, len(member.ranks) if member else record.spec.replicas)


def observe(
    records: Iterable[JobRecord],
    online: Mapping[str, ExecutorHeartbeat],
    now: datetime,
    *,
    lookup: Callable[[str], JobRecord | None],
    stopping_hold_seconds: float,
    queues: tuple[QueueConfig, ...] = (),
) -> Observed:
    """The policy's snapshot from the unfinished ``records`` and the ``online`` executors'
    heartbeats. ``lookup`` finds the record of a job a heartbeat names (finished ones too)."""
    ledger = RoomLedger(online)
    pending = [p for r in records if (p := _count_record(ledger, r, now, stopping_hold_seconds))]
    _count_heartbeats(ledger, lookup)
    snapshot = Snapshot(
        pending=tuple(pending), executors=ledger.free(), running=tuple(ledger.running), queues=queues
    )
    return Observed(snapshot, ledger.held_gpus)
