"""The placement policy: a pure function from a snapshot of the cluster to assignments.

No broker, no clock, no I/O: the service builds the snapshot, this decides, the service applies
the decisions by compare-and-set. The same function drives tests, benchmarks and the simulator.

Policy (foundation): pending jobs in order of priority (high first), then submit time; each goes
to the executor with the least free capacity that still fits all its replicas (best fit, which keeps
large holes for large jobs). A job that fits nowhere is skipped and later, smaller jobs may still
start (plain backfill; reservations for the head job come with the fair-share scheduler).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Demand:
    cpu: float
    memory: int
    gpu: int = 0

    def times(self, n: int) -> Demand:
        return Demand(self.cpu * n, self.memory * n, self.gpu * n)

    def fits_in(self, free: Demand) -> bool:
        return self.cpu <= free.cpu + 1e-9 and self.memory <= free.memory and self.gpu <= free.gpu

    def minus(self, other: Demand) -> Demand:
        return Demand(self.cpu - other.cpu, self.memory - other.memory, self.gpu - other.gpu)


@dataclass(frozen=True, slots=True)
class PendingJob:
    job_id: str
    attempt: int
    priority: int
    submitted_at: float
    demand: Demand
    replicas: int = 1
    not_before: float | None = None

    @property
    def total(self) -> Demand:
        return self.demand.times(self.replicas)


@dataclass(frozen=True, slots=True)
class ExecutorFree:
    executor_id: str
    free: Demand


@dataclass(frozen=True, slots=True)
class Snapshot:
    pending: tuple[PendingJob, ...]
    executors: tuple[ExecutorFree, ...]


@dataclass(frozen=True, slots=True)
class Assignment:
    job_id: str
    attempt: int
    executor_id: str


@dataclass(frozen=True, slots=True)
class Waiting:
    job_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    assignments: tuple[Assignment, ...]
    waiting: tuple[Waiting, ...]


def queue_order(job: PendingJob) -> tuple[int, float, str]:
    return (-job.priority, job.submitted_at, job.job_id)


def plan(snapshot: Snapshot, now: float) -> Plan:
    free = {e.executor_id: e.free for e in snapshot.executors}
    assignments: list[Assignment] = []
    waiting: list[Waiting] = []
    for job in sorted(snapshot.pending, key=queue_order):
        if job.not_before is not None and job.not_before > now:
            waiting.append(Waiting(job.job_id, "retry backoff"))
            continue
        need = job.total
        fitting = [eid for eid, room in free.items() if need.fits_in(room)]
        if not fitting:
            waiting.append(Waiting(job.job_id, _why_not(need, free)))
            continue
        # best fit: the executor left with the least room, ties broken by id for determinism
        chosen = min(fitting, key=lambda eid: (_slack(free[eid], need), eid))
        free[chosen] = free[chosen].minus(need)
        assignments.append(Assignment(job.job_id, job.attempt, chosen))
    return Plan(tuple(assignments), tuple(waiting))


def _slack(room: Demand, need: Demand) -> tuple[float, float, float]:
    left = room.minus(need)
    return (left.gpu, left.cpu, left.memory)


def _why_not(need: Demand, free: dict[str, Demand]) -> str:
    if not free:
        return "no executor is online"
    best_cpu = max(room.cpu for room in free.values())
    best_mem = max(room.memory for room in free.values())
    best_gpu = max(room.gpu for room in free.values())
    short = []
    if need.cpu > best_cpu + 1e-9:
        short.append(f"cpu {need.cpu:g} > {best_cpu:g} free")
    if need.memory > best_mem:
        short.append(f"memory {need.memory}Mi > {best_mem}Mi free")
    if need.gpu > best_gpu:
        short.append(f"gpu {need.gpu} > {best_gpu} free")
    return "no executor has room: " + (", ".join(short) or "no single executor fits every resource")
