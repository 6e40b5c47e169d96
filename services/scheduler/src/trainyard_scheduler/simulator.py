"""`trainyard simulate`: the real placement policy over a synthetic workload, in simulated time.

Pure: no broker, no clock but the simulated one (only the policy's own decision time is measured
on the wall clock, since that is what it reports). Every ``cycle`` simulated seconds it does what
the scheduler service does: finish the attempts whose time is up, requeue the victims whose grace
period is over, add the jobs that arrived, build a ``Snapshot``, call ``plan`` and apply the
``Plan`` (start the assignments, give victims their notice). Nothing sleeps.

A workload (YAML, see ``Workload``) gives the cluster (node types and counts), the queues (the
same ``QueueConfig`` the service reads) and, per queue, a Poisson arrival rate with the shapes,
durations, gang sizes, priorities and preemptible share of its jobs. A job runs for its duration
(or its timeout, if shorter); a preempted job restarts from the beginning.

Reported: utilisation per resource; wait (submit -> first start) per queue, p50/p99; fairness as
Jain's index of each queue's dominant share over its weighted entitlement, averaged over the cycles
in which two or more queues had jobs waiting; decisions; decision time per cycle.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainyard_contracts.queues import QueueConfig
from trainyard_scheduler.policy import Demand, ExecutorFree, PendingJob, RunningJob, Snapshot, plan


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NodeType(_Model):
    count: int = Field(ge=1, le=100_000)
    cpu: float = Field(gt=0)
    memory: int = Field(gt=0, description="MiB")
    gpu: int = Field(0, ge=0)


class Shape(_Model):
    cpu: float = Field(gt=0)
    memory: int = Field(ge=0, description="MiB")
    gpu: int = Field(0, ge=0)
    weight: float = Field(1.0, gt=0, description="relative frequency among the queue's shapes")


class Gang(_Model):
    probability: float = Field(0.0, ge=0, le=1)
    replicas: list[int] = Field(default_factory=lambda: [2, 4], min_length=1)


class Arrivals(_Model):
    queue: str
    rate: float = Field(gt=0, description="jobs per simulated second (Poisson)")
    shapes: list[Shape] = Field(default_factory=lambda: [Shape(cpu=1, memory=2048)], min_length=1)
    duration_mean: float = Field(600, gt=0, description="seconds, exponentially distributed")
    duration_max: float = Field(7200, gt=0)
    timeout_factor: float | None = Field(
        2.0, gt=0, description="timeout = duration x this (what the policy sees); null: no timeout"
    )
    gang: Gang = Field(default_factory=Gang)
    priorities: dict[int, float] = Field(default_factory=lambda: {0: 1.0}, description="priority: weight")
    preemptible: float = Field(0.0, ge=0, le=1, description="share of jobs marked preemptible")


class Workload(_Model):
    nodes: list[NodeType] = Field(min_length=1)
    queues: list[QueueConfig] = Field(min_length=1)
    arrivals: list[Arrivals] = Field(min_length=1)
    duration: float = Field(3600, gt=0, description="seconds during which jobs arrive")
    cycle: float = Field(5, gt=0, description="seconds between planning passes")
    grace: float = Field(30, ge=0, description="seconds a victim gets to stop")
    drain: float = Field(3.0, ge=1, description="keep running until duration x drain at most")

    @model_validator(mode="after")
    def _queues_exist(self) -> Workload:
        names = {q.name for q in self.queues}
        unknown = sorted({a.queue for a in self.arrivals} - names)
        if unknown:
            raise ValueError(f"arrivals name queues that are not configured: {', '.join(unknown)}")
        return self


class WorkloadError(ValueError):
    """A workload file that cannot be used, with where and why."""


def load_workload(path: Path) -> Workload:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise WorkloadError(f"{path}: {exc}") from exc
    try:
        return Workload.model_validate(data)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()]
        raise WorkloadError(f"{path}: invalid workload\n  " + "\n  ".join(lines)) from exc


def default_workload(nodes: int = 20) -> Workload:
    """Three queues competing for a cluster with some GPU nodes, busy enough to queue."""
    gpu_nodes = max(1, nodes // 5)
    return Workload(
        nodes=[
            NodeType(count=max(1, nodes - gpu_nodes), cpu=32, memory=131072),
            NodeType(count=gpu_nodes, cpu=64, memory=524288, gpu=8),
        ],
        queues=[
            QueueConfig(name="prod", weight=4),
            QueueConfig(name="research", weight=2),
            QueueConfig(name="batch", weight=1, preemptible_by_default=True),
        ],
        arrivals=[
            Arrivals(
                queue="prod",
                rate=0.012 * nodes,
                shapes=[Shape(cpu=4, memory=8192, weight=3), Shape(cpu=8, memory=32768)],
                duration_mean=600,
                priorities={0: 0.8, 5: 0.2},
            ),
            Arrivals(
                queue="research",
                rate=0.005 * nodes,
                shapes=[Shape(cpu=8, memory=65536, gpu=2, weight=2), Shape(cpu=2, memory=8192)],
                duration_mean=1200,
                gang=Gang(probability=0.2, replicas=[2, 4, 8]),
            ),
            Arrivals(
                queue="batch",
                rate=0.015 * nodes,
                shapes=[Shape(cpu=2, memory=4096, weight=3), Shape(cpu=16, memory=65536)],
                duration_mean=900,
                preemptible=1.0,
            ),
        ],
    )


@dataclass(slots=True)
class _Job:
    job_id: str
    queue: str
    priority: int
    submitted_at: float
    demand: Demand
    replicas: int
    duration: float
    timeout: float | None
    preemptible: bool
    attempt: int = 1
    first_start: float | None = None


@dataclass(slots=True)
class _Run:
    job: _Job
    started_at: float
    ends_at: float
    slots: list[tuple[str, int]]
    stop_at: float | None = None  # preempted: leaves then and is requeued


@dataclass
class _Stats:
    cycles: int = 0
    assignments: int = 0
    preemptions: int = 0
    reservations: int = 0
    decision_seconds: list[float] = field(default_factory=list)
    used_time: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    jain: list[float] = field(default_factory=list)
    share_time: dict[str, float] = field(default_factory=dict)
    active_time: dict[str, float] = field(default_factory=dict)
    submitted: dict[str, int] = field(default_factory=dict)


def _arrivals(workload: Workload, rng: random.Random) -> list[_Job]:
    jobs: list[_Job] = []
    for a in workload.arrivals:
        t = 0.0
        weights = [s.weight for s in a.shapes]
        priorities = list(a.priorities)
        pweights = [a.priorities[p] for p in priorities]
        n = 0
        while True:
            t += rng.expovariate(a.rate)
            if t >= workload.duration:
                break
            shape = rng.choices(a.shapes, weights)[0]
            duration = min(rng.expovariate(1 / a.duration_mean), a.duration_max)
            replicas = rng.choice(a.gang.replicas) if rng.random() < a.gang.probability else 1
            n += 1
            jobs.append(
                _Job(
                    job_id=f"{a.queue}-{n:06d}",
                    queue=a.queue,
                    priority=rng.choices(priorities, pweights)[0],
                    submitted_at=t,
                    demand=Demand(shape.cpu, shape.memory, shape.gpu),
                    replicas=replicas,
                    duration=max(duration, 1.0),
                    timeout=None if a.timeout_factor is None else max(duration, 1.0) * a.timeout_factor,
                    preemptible=rng.random() < a.preemptible,
                )
            )
    jobs.sort(key=lambda j: j.submitted_at)
    return jobs


def _percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, math.ceil(p / 100 * len(ordered)) - 1)
    return ordered[k]


def jain(values: list[float]) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one has everything."""
    total = sum(values)
    squares = sum(v * v for v in values)
    return 1.0 if squares == 0 else total * total / (len(values) * squares)


def simulate(workload: Workload, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    arrivals = _arrivals(workload, rng)
    capacity: dict[str, list[float]] = {}
    for t, node_type in enumerate(workload.nodes):
        for i in range(node_type.count):
            capacity[f"n{t}-{i:05d}"] = [node_type.cpu, float(node_type.memory), float(node_type.gpu)]
    free = {eid: list(cap) for eid, cap in capacity.items()}
    totals = [sum(c[r] for c in capacity.values()) for r in range(3)]
    weights = {q.name: q.weight for q in workload.queues}
    pending: dict[str, _Job] = {}
    running: dict[str, _Run] = {}
    waits: dict[str, list[float]] = {q.name: [] for q in workload.queues}
    stats = _Stats()
    for job in arrivals:
        stats.submitted[job.queue] = stats.submitted.get(job.queue, 0) + 1
    finished = 0
    next_arrival = 0
    now = 0.0
    end_by = workload.duration * workload.drain
    while now <= end_by:
        # attempts whose time is up finish; victims whose grace is over leave and are requeued
        for job_id, run in list(running.items()):
            if run.stop_at is not None and run.stop_at <= now:
                _release(free, run)
                del running[job_id]
                run.job.attempt += 1
                pending[job_id] = run.job
            elif run.ends_at <= now:
                _release(free, run)
                del running[job_id]
                finished += 1
        while next_arrival < len(arrivals) and arrivals[next_arrival].submitted_at <= now:
            job = arrivals[next_arrival]
            pending[job.job_id] = job
            next_arrival += 1
        if not pending and not running and next_arrival >= len(arrivals):
            break
        if pending:
            snapshot = _snapshot(workload, now, pending, running, free)
            started = time.perf_counter()
            decisions = plan(snapshot, now)
            stats.decision_seconds.append(time.perf_counter() - started)
            stats.cycles += 1
            stats.reservations += decisions.reservation is not None
            for a in decisions.assignments:
                job = pending.pop(a.job_id)
                slots = [(p.executor_id, len(p.ranks)) for p in a.ranks]
                for eid, k in slots:
                    f = free[eid]
                    f[0] -= job.demand.cpu * k
                    f[1] -= job.demand.memory * k
                    f[2] -= job.demand.gpu * k
                    if min(f) < -1e-6:
                        raise RuntimeError(f"the policy over-committed {eid} at t={now:g}: {f}")
                length = job.duration if job.timeout is None else min(job.duration, job.timeout)
                running[a.job_id] = _Run(job, now, now + length, slots)
                if job.first_start is None:
                    job.first_start = now
                    waits[job.queue].append(now - job.submitted_at)
                stats.assignments += 1
            for victim_id in {v.job_id for v in decisions.victims}:
                run = running[victim_id]
                if run.stop_at is None:
                    run.stop_at = now + workload.grace
                    stats.preemptions += 1
        _account(stats, workload, running, pending, totals, weights)
        now += workload.cycle
    elapsed = max(now, workload.cycle)
    return _report(workload, seed, stats, waits, totals, elapsed, len(arrivals), finished, pending, running)


def _release(free: dict[str, list[float]], run: _Run) -> None:
    d = run.job.demand
    for eid, k in run.slots:
        f = free[eid]
        f[0] += d.cpu * k
        f[1] += d.memory * k
        f[2] += d.gpu * k


def _snapshot(
    workload: Workload,
    now: float,
    pending: dict[str, _Job],
    running: dict[str, _Run],
    free: dict[str, list[float]],
) -> Snapshot:
    jobs = tuple(
        PendingJob(
            j.job_id, j.attempt, j.priority, j.submitted_at, j.demand, j.replicas, None, j.queue, j.timeout
        )
        for j in pending.values()
    )
    rows = tuple(
        RunningJob(
            job_id,
            run.job.attempt,
            eid,
            run.job.demand.times(k),
            run.job.queue,
            run.job.priority,
            run.job.preemptible,
            run.started_at,
            run.job.timeout,
            ending=run.stop_at is not None,
        )
        for job_id, run in running.items()
        for eid, k in run.slots
    )
    executors = tuple(ExecutorFree(eid, Demand(f[0], int(f[1]), int(f[2]))) for eid, f in free.items())
    return Snapshot(jobs, executors, rows, tuple(workload.queues))


def _account(
    stats: _Stats,
    workload: Workload,
    running: dict[str, _Run],
    pending: dict[str, _Job],
    totals: list[float],
    weights: dict[str, float],
) -> None:
    used = [0.0, 0.0, 0.0]
    by_queue: dict[str, list[float]] = {name: [0.0, 0.0, 0.0] for name in weights}
    for run in running.values():
        d, k = run.job.demand, sum(n for _, n in run.slots)
        amounts = (d.cpu * k, d.memory * k, d.gpu * k)
        for r in range(3):
            used[r] += amounts[r]
            by_queue[run.job.queue][r] += amounts[r]
    for r in range(3):
        stats.used_time[r] += used[r] * workload.cycle
    share = {name: max((u[r] / totals[r]) for r in range(3) if totals[r] > 0) for name, u in by_queue.items()}
    waiting = {j.queue for j in pending.values()}
    active = waiting | {run.job.queue for run in running.values()}
    if active:
        entitled_total = sum(weights[q] for q in active)
        for q in active:
            stats.share_time[q] = stats.share_time.get(q, 0.0) + share[q] * workload.cycle
            stats.active_time[q] = stats.active_time.get(q, 0.0) + workload.cycle
        if len(waiting) >= 2:
            stats.jain.append(jain([share[q] / (weights[q] / entitled_total) for q in active]))


def _report(
    workload: Workload,
    seed: int,
    stats: _Stats,
    waits: dict[str, list[float]],
    totals: list[float],
    elapsed: float,
    submitted: int,
    finished: int,
    pending: dict[str, _Job],
    running: dict[str, _Run],
) -> dict[str, Any]:
    names = ("cpu", "memory", "gpu")
    decision = stats.decision_seconds
    submitted_per_queue = stats.submitted
    weight_sum = sum(q.weight for q in workload.queues)
    return {
        "nodes": sum(n.count for n in workload.nodes),
        "seed": seed,
        "simulated_seconds": round(elapsed, 1),
        "cycles": stats.cycles,
        "jobs": {
            "submitted": submitted,
            "started": sum(len(w) for w in waits.values()),
            "finished": finished,
            "pending_at_end": len(pending),
            "running_at_end": len(running),
        },
        "utilisation": {
            names[r]: round(stats.used_time[r] / (totals[r] * elapsed), 4) for r in range(3) if totals[r] > 0
        },
        "wait_seconds": {
            q: {
                "submitted": submitted_per_queue.get(q, 0),
                "jobs": len(w),
                "p50": None if not w else round(statistics.median(w), 1),
                "p99": None if not w else round(_percentile(w, 99) or 0.0, 1),
            }
            for q, w in waits.items()
        },
        "fairness_jain": None if not stats.jain else round(statistics.fmean(stats.jain), 4),
        "shares": {
            q.name: {
                "weight": q.weight,
                "entitled": round(q.weight / weight_sum, 4),
                "average_when_active": round(stats.share_time.get(q.name, 0.0) / stats.active_time[q.name], 4)
                if stats.active_time.get(q.name)
                else None,
            }
            for q in workload.queues
        },
        "decisions": {
            "assignments": stats.assignments,
            "preemptions": stats.preemptions,
            "cycles_with_reservation": stats.reservations,
        },
        "decision_ms": {
            "mean": round(statistics.fmean(decision) * 1000, 3) if decision else None,
            "p50": round(statistics.median(decision) * 1000, 3) if decision else None,
            "p99": round((_percentile(decision, 99) or 0.0) * 1000, 3) if decision else None,
            "max": round(max(decision) * 1000, 3) if decision else None,
        },
    }
