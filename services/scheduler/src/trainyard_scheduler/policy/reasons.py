"""Why a job waits, in words a person can act on (the ``why`` of a wait and its kind).

One sentence per kind and shape, made once per pass and shared by every job of that shape.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from trainyard_scheduler.policy.cluster import EPS, replicas_in
from trainyard_scheduler.policy.model import PendingJob, WaitKind
from trainyard_scheduler.policy.quotas import INF

if TYPE_CHECKING:
    from trainyard_scheduler.policy.planner import Pass

# a shape with its replica count: (cpu, memory, gpu, replicas)
ShapeKey = tuple[float, float, float, int]


class WaitReasons:
    """The sentences of one pass: reads the pass's cluster, queue book and reservation."""

    def __init__(self, p: Pass) -> None:
        self.p = p
        self.said: dict[tuple[object, ...], tuple[WaitKind, str]] = {}
        # every executor's capacity (free + running) does not change in a pass: one answer per shape
        self._capacities: list[tuple[tuple[float, float, float], int]] | None = None
        self._too_large_of: dict[ShapeKey, bool] = {}

    def of(self, job: PendingJob, q: int, kind: WaitKind, detail: str) -> tuple[WaitKind, str]:
        """The kind (capacity and gang become too_large when nothing could ever hold the job)
        and the sentence."""
        d = job.demand
        # only quota messages name the queue
        key = (kind, q if kind == "quota" else -1, d.cpu, d.memory, d.gpu, job.replicas, detail)
        said = self.said.get(key)
        if said is None:
            if (kind == "capacity" or kind == "gang") and self.too_large(job):
                kind = "too_large"
            said = self.said[key] = (kind, self._message(job, q, kind, detail))
        return said

    def too_large(self, job: PendingJob) -> bool:
        """Would not fit even if every running job (and this pass's starts) had ended."""
        d, n = job.demand, job.replicas
        key = (d.cpu, d.memory, d.gpu, n)
        known = self._too_large_of.get(key)
        if known is not None:
            return known
        if self._capacities is None:
            self._capacities = self._capacity_types()
        total = 0
        answer = True
        dc, dm, dg = d.cpu, d.memory, d.gpu
        for (c, m, gp), count in self._capacities:
            total += count * replicas_in(c, m, gp, dc, dm, dg, n)
            if total >= n:
                answer = False
                break
        self._too_large_of[key] = answer
        return answer

    def _capacity_types(self) -> list[tuple[tuple[float, float, float], int]]:
        """Executors of one capacity are one entry: the check is per type, not per executor."""
        running = self.p.running
        if running.simple:
            return list(Counter(zip(*running.capacity, strict=True)).items())
        cl = self.p.cluster
        cap = [[0.0, 0.0, 0.0] for _ in cl.ids]
        for e in self.p.snapshot.executors:
            i = cl.index[e.executor_id]
            cap[i] = [float(e.free.cpu), float(e.free.memory), float(e.free.gpu)]
        for g in running.groups.values():
            for i, c, m, gp in g.rows:
                cap[i][0] += c
                cap[i][1] += m
                cap[i][2] += gp
        return list(Counter((c, m, gp) for c, m, gp in cap).items())

    def _message(self, job: PendingJob, q: int, kind: WaitKind, detail: str) -> str:
        d, n = job.demand, job.replicas
        shape = _shape(d.cpu, d.memory, d.gpu)
        if kind == "backoff":
            return "retry backoff"
        if kind == "no_executor":
            return "no executor is online"
        if kind == "quota":
            return self._quota_message(q, job, detail)
        if kind == "reserved":
            r = self.p.reservation
            assert r is not None
            when = "when jobs without a timeout end" if r.start is None else f"at {r.start:.0f}"
            return f"next in line: room reserved on {', '.join(r.executors)} {when}"
        if kind == "preempting":
            return "stopping preemptible jobs to make room"
        if kind == "backfill":
            r = self.p.reservation
            assert r is not None
            return f"room now, but it could still run when {r.job_id} is due to start, and would delay it"
        if kind == "too_large":
            what = f"{n} x ({shape})" if n > 1 else shape
            return f"too large: {what} does not fit on the online executors even when they are idle"
        if kind == "gang":
            fit = self.p.cluster.count(d.cpu, d.memory, d.gpu, n)
            return f"gang of {n} starts all at once: {fit} of {n} replicas of ({shape}) fit now" + (
                self._short_total(d.cpu * n, d.memory * n, d.gpu * n)
            )
        return "no executor has room: " + self._short_single(d.cpu, d.memory, d.gpu)

    def _quota_message(self, q: int, job: PendingJob, resource: str) -> str:
        book = self.p.book
        name = book.names[q]
        r = resource.removeprefix("cohort ")
        ri = ("cpu", "memory", "gpu").index(r)
        need = (job.demand.cpu, job.demand.memory, job.demand.gpu)[ri] * job.replicas
        if resource.startswith("cohort "):
            k = book.cohort_of[q]
            return (
                f"queue {name}: its cohort has no unused {r} quota to lend "
                f"({_amount(ri, book.cohort_use[k][ri])} of {_amount(ri, book.cohort_cap[k][ri])} used, "
                f"needs {_amount(ri, need)})"
            )
        nominal, limit = book.nominal[q][ri], book.limit[q][ri]
        quota = _amount(ri, nominal) + (
            f" + borrowing {_amount(ri, limit - nominal)}" if limit > nominal else ""
        )
        return (
            f"queue {name}: {r} quota {quota} reached "
            f"({_amount(ri, book.use[q][ri])} in use, needs {_amount(ri, need)})"
        )

    def _short_single(self, dc: float, dm: float, dg: float) -> str:
        best = self.p.cluster.best()
        short = [
            f"{name} {_amount(r, need)} > {_amount(r, best[r])} free"
            for r, (name, need) in enumerate((("cpu", dc), ("memory", dm), ("gpu", dg)))
            if need > best[r] + EPS
        ]
        return ", ".join(short) or "no single executor has every resource free at once"

    def _short_total(self, dc: float, dm: float, dg: float) -> str:
        cl = self.p.cluster
        total = (sum(cl.cpu), sum(cl.mem), sum(cl.gpu))
        short = [
            f"{name} {_amount(r, need)} > {_amount(r, total[r])} free"
            for r, (name, need) in enumerate((("cpu", dc), ("memory", dm), ("gpu", dg)))
            if need > total[r] + EPS
        ]
        return ": " + ", ".join(short) if short else ""


def _amount(resource: int, value: float) -> str:
    if value == INF:
        return "unlimited"
    return f"{value:g}" if resource != 1 else f"{value:g}Mi"


def _shape(cpu: float, memory: int, gpu: int) -> str:
    return f"cpu {cpu:g}, memory {memory}Mi" + (f", gpu {gpu}" if gpu else "")
