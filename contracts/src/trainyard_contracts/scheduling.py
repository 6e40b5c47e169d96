"""What the scheduler says about its decisions: per-cycle decision events, ``why`` answers and
dry runs. Requests go to the leader over NATS request/reply; cycle events go to a stream."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from trainyard_contracts._time import utcnow
from trainyard_contracts.spec import JobSpec


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


# what the scheduler's placement policy says of a job it did not start (its pass's reasons)
PlannedWaitKind = Literal[
    "backoff",  # a retry waits for its backoff: not before estimated_start
    "quota",  # the queue's quota (borrowing included) would be exceeded
    "reserved",  # holds the reservation: starts when the room it waits for frees up (estimated_start)
    "preempting",  # running jobs are being stopped to make room for it
    "backfill",  # there is room now, but taking it would delay the reserved job
    "capacity",  # no executor has room now
    "gang",  # not all replicas of the gang fit at once
    "too_large",  # does not fit even when every running job has ended
    "no_executor",  # no executor is online
]
# "other": what the service says where no pass spoke (not planned yet, not pending)
WaitKind = Literal[PlannedWaitKind, "other"]


class WaitReason(_Model):
    """Why one job is still pending after the leader's last planning pass."""

    kind: WaitKind = "other"
    message: str
    position: int | None = Field(None, description="1 = the next job of its queue to start")
    queue_length: int | None = None
    estimated_start: datetime | None = Field(None, description="from running jobs' timeouts")


class WhyRequest(_Model):
    job_id: str


class WhyAnswer(_Model):
    job_id: str
    found: bool = True
    state: str | None = None
    pending: bool = False
    reason: WaitReason | None = None
    decided_at: datetime | None = Field(None, description="the planning pass this comes from")
    leader: str | None = None


class DryRunRequest(_Model):
    spec: JobSpec


class DryRunAnswer(_Model):
    """What the leader would decide now for this spec, with nothing queued."""

    would_start: bool
    executors: list[str] = Field(default_factory=list)
    reason: WaitReason | None = None
    preempts: list[str] = Field(default_factory=list, description="jobs it would preempt")
    leader: str | None = None
    decided_at: datetime = Field(default_factory=utcnow)


class AssignmentDecision(_Model):
    job_id: str
    attempt: int
    executors: list[str]
    queue: str


class PreemptionDecision(_Model):
    job_id: str
    attempt: int
    executor_id: str | None = None
    reason: str


class CycleDecisions(_Model):
    """One planning pass of the leader: what it placed, what it preempted, what still waits."""

    type: Literal["cycle"] = "cycle"
    cycle: int
    replica: str
    term: int
    at: datetime = Field(default_factory=utcnow)
    duration_ms: float
    pending: int
    assignments: list[AssignmentDecision] = Field(default_factory=list)
    preemptions: list[PreemptionDecision] = Field(default_factory=list)
    waiting_by_kind: dict[str, int] = Field(default_factory=dict)
