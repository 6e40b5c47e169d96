"""The policy's input (``Snapshot``) and output (``Plan``): plain data, no behaviour worth a test.

Every field added after the first version has a default, so a caller that fills only the first
fields (pending jobs and free capacity) keeps working and simply gets no quotas, no preemption
and no reservation estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from trainyard_contracts.queues import QueueConfig
from trainyard_contracts.scheduling import PlannedWaitKind


@dataclass(frozen=True, slots=True)
class Demand:
    """cpu in cores, memory in MiB, gpu in devices."""

    cpu: float
    memory: int
    gpu: int = 0

    def times(self, n: int) -> Demand:
        return Demand(self.cpu * n, self.memory * n, self.gpu * n)

    def fits_in(self, free: Demand) -> bool:
        return self.cpu <= free.cpu + 1e-9 and self.memory <= free.memory and self.gpu <= free.gpu

    def minus(self, other: Demand) -> Demand:
        return Demand(self.cpu - other.cpu, self.memory - other.memory, self.gpu - other.gpu)

    def plus(self, other: Demand) -> Demand:
        return Demand(self.cpu + other.cpu, self.memory + other.memory, self.gpu + other.gpu)


@dataclass(frozen=True, slots=True)
class PendingJob:
    """A job waiting to run. ``demand`` is per replica; ``replicas > 1`` is a gang."""

    job_id: str
    attempt: int
    priority: int
    submitted_at: float
    demand: Demand
    replicas: int = 1
    not_before: float | None = None
    queue: str = "default"
    timeout: float | None = None  # seconds; None: runs until it ends (no estimate of its end)

    @property
    def total(self) -> Demand:
        return self.demand.times(self.replicas)


@dataclass(frozen=True, slots=True)
class RunningJob:
    """What a running (or scheduled) attempt holds on ONE executor.

    A gang spread over several executors is several rows with the same ``job_id``; preempting
    it evicts every row. ``ending``: already told to stop (preempted, cancelled), its resources
    come back within the grace period, so it is never chosen as a victim again.
    """

    job_id: str
    attempt: int
    executor_id: str
    used: Demand
    queue: str = "default"
    priority: int = 0
    preemptible: bool = False  # or-ed with the queue's preemptible_by_default
    started_at: float = 0.0
    timeout: float | None = None
    ending: bool = False

    @property
    def expected_end(self) -> float | None:
        return None if self.timeout is None else self.started_at + self.timeout


@dataclass(frozen=True, slots=True)
class ExecutorFree:
    executor_id: str
    free: Demand


@dataclass(frozen=True, slots=True)
class Snapshot:
    pending: tuple[PendingJob, ...]
    executors: tuple[ExecutorFree, ...]
    running: tuple[RunningJob, ...] = ()
    # queues not listed here behave like an unlimited queue of weight 1 without a cohort
    queues: tuple[QueueConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class RankPlacement:
    """The global ranks of a gang that one executor runs."""

    executor_id: str
    ranks: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Assignment:
    """Start ``job_id`` now. ``executor_id`` is rank 0's executor (the rendezvous master);
    ``ranks`` lists every executor of the job with the ranks it runs (one entry when the whole
    job runs on one executor)."""

    job_id: str
    attempt: int
    executor_id: str
    ranks: tuple[RankPlacement, ...] = ()

    @property
    def world_size(self) -> int:
        return sum(len(p.ranks) for p in self.ranks) or 1


@dataclass(frozen=True, slots=True)
class Victim:
    """A running attempt to stop (notice, grace period, requeue) so that ``for_job`` can start."""

    job_id: str
    attempt: int
    executor_id: str
    reason: str
    for_job: str


# what the pass says of a job it did not start: the contracts' list, which the API's answers carry
WaitKind = PlannedWaitKind


@dataclass(frozen=True, slots=True)
class WaitReason:
    kind: WaitKind
    message: str
    position: int  # 1-based among the waiting jobs of its queue, in scheduling order
    estimated_start: float | None  # backoff: its end; reserved: when the room frees up (None: unknown)


class Waiting(NamedTuple):
    """Why a job did not start in this pass. A tuple (not a dataclass) because a pass can make
    a hundred thousand of these and a tuple is twice as cheap to build; ``why`` gives the
    structured reason."""

    job_id: str
    reason: str  # the human sentence (= why.message)
    kind: WaitKind = "capacity"
    position: int = 0
    estimated_start: float | None = None

    @property
    def why(self) -> WaitReason:
        return WaitReason(self.kind, self.reason, self.position, self.estimated_start)


@dataclass(frozen=True, slots=True)
class Reservation:
    """The capacity held for the first job that could not start: no later job may delay it."""

    job_id: str
    start: float | None  # None: only when jobs without a timeout end
    executors: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    assignments: tuple[Assignment, ...]
    waiting: tuple[Waiting, ...]
    victims: tuple[Victim, ...] = ()
    # where each preempting job will run once its victims have left (a hint; the next pass decides)
    claims: tuple[Assignment, ...] = ()
    reservation: Reservation | None = None
