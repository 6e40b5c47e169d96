"""One planning pass: order, quotas, gang placement, one reservation with backfill, preemption.

Order: priority first (higher first); within a priority, the queue with the lowest weighted
dominant share goes next (weighted DRF, re-evaluated after every start); within a queue, submit
time. Each job in turn:

1. in retry backoff -> waits;
2. over its queue's quota (borrowing included) -> may preempt (see 5), else waits;
3. fits now (all replicas at once, across executors if needed) -> starts, unless a reservation
   exists and it could still be running at the reserved start: then it must also fit in the room
   the reservation leaves (backfill that cannot delay the reserved job);
4. else, before any reservation exists in this pass, it may preempt: running jobs that are
   preemptible and of lower priority, or (same priority, another queue) of a queue over its fair
   share while this job's queue is under it and stays at or below the victim's share afterwards.
   Victims: on one executor for a single replica (the executor needing the fewest, then the
   least work lost), greedy then pruned for a gang; youngest first. Only when the job fits once
   they are gone. The job then waits ("preempting") with its room claimed.
5. else the first such job gets the pass's reservation: the earliest time, from the running jobs'
   expected ends (start + timeout), at which it fits, and where. Nobody behind it preempts in this
   pass, and every later job is a backfill candidate (3).
"""

from __future__ import annotations

import gc
import heapq
from operator import attrgetter

from trainyard_scheduler.policy.cluster import Cluster, Release, Slots
from trainyard_scheduler.policy.model import (
    Assignment,
    PendingJob,
    Plan,
    Reservation,
    Snapshot,
    Victim,
    Waiting,
    WaitKind,
)
from trainyard_scheduler.policy.preemption import Preemption
from trainyard_scheduler.policy.quotas import INF
from trainyard_scheduler.policy.reasons import ShapeKey, WaitReasons
from trainyard_scheduler.policy.running import load_running

# what a job that had to wait is remembered by, so that a job like it waits too without a look:
# (queue, cpu, memory, gpu, replicas, long)
DeadKey = tuple[int, float, float, float, int, bool]


def _make_waiting(fields: tuple[str, str, WaitKind, int, float | None]) -> Waiting:
    return tuple.__new__(Waiting, fields)


def queue_order(job: PendingJob) -> tuple[int, float, str]:
    """Priority, then submit time (the order within one queue)."""
    return (-job.priority, job.submitted_at, job.job_id)


def plan(snapshot: Snapshot, now: float) -> Plan:
    # a pass allocates one small object per waiting job and frees nothing until it ends: the
    # cyclic garbage collector would rescan the whole snapshot again and again for no garbage,
    # so it is paused for the pass
    paused = gc.isenabled()
    gc.disable()
    try:
        return Pass(snapshot, now).run()
    finally:
        if paused:
            gc.enable()


class Pass:
    """One planning pass over a snapshot; ``run`` once."""

    def __init__(self, snapshot: Snapshot, now: float, *, grouped: bool = False) -> None:
        """``grouped``: read the running jobs the general way even when each holds one row (the
        tests compare both ways)."""
        self.now = now
        self.snapshot = snapshot
        self.cluster = Cluster(snapshot.executors)
        self.running = load_running(snapshot, self.cluster, now, grouped=grouped)
        self.book = self.running.book
        self.preemption = Preemption(self)
        self.reasons = WaitReasons(self)
        # the fair shares need the pending jobs' queues too: run() finishes them (one look at
        # the pending jobs for everything)
        self.fair: list[float] = []
        self.releases: list[Release] = []  # of this pass's starts and claims, until the reservation
        self.reservation: Reservation | None = None
        self.reserved_at: float | None = None
        self.assignments: list[Assignment] = []
        self.claims: list[Assignment] = []
        self.victims: list[Victim] = []
        self.waiting: list[Waiting] = []
        self.dead: dict[DeadKey, tuple[WaitKind, str]] = {}
        self.position = [0] * len(self.book.names)
        self.never_fits: set[ShapeKey] = set()

    def _by_priority_and_queue(self) -> dict[int, dict[int, list[PendingJob]]]:
        """The pending jobs by priority, then by queue index (queues first met are booked)."""
        book = self.book
        index = book.index
        classes: dict[int, dict[int, list[PendingJob]]] = {}
        for job in self.snapshot.pending:
            queues = classes.get(job.priority)
            if queues is None:
                queues = classes[job.priority] = {}
            q = index.get(job.queue)
            if q is None:
                q = book.of(job.queue)
            jobs = queues.get(q)
            if jobs is None:
                queues[q] = [job]
            else:
                jobs.append(job)
        return classes

    def run(self) -> Plan:
        book = self.book
        classes = self._by_priority_and_queue()
        active = self.running.active
        active.update(q for queues in classes.values() for q in queues)
        weights = sum(book.weight[q] for q in active) or 1.0
        self.fair = [w / weights for w in book.weight]
        # a stable sort on submit time alone: equal times keep the snapshot's order
        by_submit = attrgetter("submitted_at")
        position = self.position
        position.extend([0] * (len(book.names) - len(position)))
        decide = self.decide
        dead = self.dead
        append = self.waiting.append
        now = self.now
        new = tuple.__new__
        heappop, heappush = heapq.heappop, heapq.heappush
        use, inverse, weight = book.use, book.inverse_total, book.weight
        for priority in sorted(classes, reverse=True):
            queues = classes[priority]
            for jobs in queues.values():
                jobs.sort(key=by_submit)
            heap = [(book.weighted_share(q), book.names[q], q) for q in queues]
            heapq.heapify(heap)
            next_of = dict.fromkeys(queues, 0)
            while heap:
                _, name, q = heappop(heap)
                jobs = queues[q]
                i = next_of[q]
                size = len(jobs)
                reserved_at = self.reserved_at
                # while a queue's jobs wait its share does not move, so it stays the lowest
                while i < size:
                    job = jobs[i]
                    i += 1
                    if reserved_at is not None:
                        # the common case of a busy cluster, inline: once the reservation is
                        # made, a job in backoff or like one that had to wait waits too (see
                        # decide); no call, no attribute of self
                        nb = job.not_before
                        if nb is not None and nb > now:
                            at = position[q] = position[q] + 1
                            append(new(Waiting, (job.job_id, "retry backoff", "backoff", at, nb)))
                            continue
                        d = job.demand
                        t = job.timeout
                        long = t is None or now + t > reserved_at or reserved_at == INF
                        known = dead.get((q, d.cpu, d.memory, d.gpu, job.replicas, long))
                        if known is not None:
                            at = position[q] = position[q] + 1
                            append(new(Waiting, (job.job_id, known[1], known[0], at, None)))
                            continue
                    if decide(job, q):
                        # its share grew: it goes on only if it is still the lowest, which is
                        # what pushing it back and popping the heap's smallest would decide
                        if i < size:
                            u = use[q]  # book.weighted_share(q), inline
                            share = max(u[0] * inverse[0], u[1] * inverse[1], u[2] * inverse[2]) / weight[q]
                            entry = (share, name, q)
                            if heap and heap[0] < entry:
                                heappush(heap, entry)
                                break
                    reserved_at = self.reserved_at
                next_of[q] = i
        return Plan(
            tuple(self.assignments),
            tuple(self.waiting),
            tuple(self.victims),
            tuple(self.claims),
            self.reservation,
        )

    def wait(self, job: PendingJob, q: int, kind: WaitKind, at: float | None, detail: str = "") -> None:
        said = self.reasons.of(job, q, kind, detail)
        position = self.position[q] = self.position[q] + 1
        self.waiting.append(_make_waiting((job.job_id, said[1], said[0], position, at)))

    def decide(self, job: PendingJob, q: int) -> bool:
        """Place, reserve for, or park one job; True when queue usage changed."""
        now = self.now
        if job.not_before is not None and job.not_before > now:
            position = self.position[q] = self.position[q] + 1
            self.waiting.append(
                tuple.__new__(Waiting, (job.job_id, "retry backoff", "backoff", position, job.not_before))
            )
            return False
        cluster = self.cluster
        if not cluster.ids:
            self.wait(job, q, "no_executor", None)
            return False
        d = job.demand
        dc, dm, dg, n = d.cpu, d.memory, d.gpu, job.replicas
        reserved_at = self.reserved_at
        timeout = job.timeout
        long = reserved_at is not None and (
            timeout is None or now + timeout > reserved_at or reserved_at == INF
        )
        # once the reservation is made nothing is preempted any more, so queue usage only grows
        # and free room only shrinks: a job like one that had to wait (same queue, shape and
        # "long") waits too. run() looks that up in ``dead`` before it calls _decide.
        if self.book.limited[q]:
            short = self.book.short(q, dc * n, dm * n, dg * n)
            if short:
                if self.reservation is None and self.preemption.try_for(job, q, dc, dm, dg, n):
                    return True
                self.wait(job, q, "quota", None, short)
                if reserved_at is not None:
                    self.dead[(q, dc, dm, dg, n, long)] = (self.waiting[-1].kind, self.waiting[-1].reason)
                return False
        if n == 1:
            i = cluster.place_one(dc, dm, dg, long)
            if i >= 0:
                self.book.add(q, dc, dm, dg)
                ranks = cluster.singles[i] or cluster.single(i)
                self.assignments.append(Assignment(job.job_id, job.attempt, ranks[0].executor_id, ranks))
                if reserved_at is None:
                    self.releases.append(Release(INF if timeout is None else now + timeout, i, dc, dm, dg))
                return True
            slots = None
        else:
            slots = cluster.find(dc, dm, dg, n, long)
        if slots is not None:
            cluster.take(slots, dc, dm, dg, long)
            self.book.add(q, dc * n, dm * n, dg * n)
            self.assignments.append(self.assignment(job, slots))
            if reserved_at is None:
                end = INF if timeout is None else now + timeout
                self.releases.extend(Release(end, i, dc * k, dm * k, dg * k) for i, k in slots)
            return True
        if self.reservation is None:
            if self.preemption.try_for(job, q, dc, dm, dg, n):
                return True
            self._reserve(job, q, dc, dm, dg, n)
            return False
        kind: WaitKind
        if long and cluster.find(dc, dm, dg, n, False) is not None:
            kind = "backfill"
        elif n > 1 and cluster.find(dc, dm, dg, 1, False) is not None:
            kind = "gang"
        else:
            kind = "capacity"
        self.wait(job, q, kind, None)
        # the label stays that of the first job of this shape (room now may go later in the pass)
        self.dead[(q, dc, dm, dg, n, long)] = (self.waiting[-1].kind, self.waiting[-1].reason)
        return False

    def assignment(self, job: PendingJob, slots: Slots) -> Assignment:
        ranks = self.cluster.placements(slots)
        return Assignment(job.job_id, job.attempt, ranks[0].executor_id, ranks)

    def _reserve(self, job: PendingJob, q: int, dc: float, dm: float, dg: float, n: int) -> None:
        """The pass's one reservation: the earliest time, from the running jobs' expected ends,
        at which job fits, and where."""
        if (dc, dm, dg, n) in self.never_fits:
            self.wait(job, q, "too_large", None)
            return
        now = self.now
        releases = self.releases + self.running.releases(now)
        heapq.heapify(releases)  # earliest pops only as many as it needs, in sorted order
        found = self.cluster.earliest(dc, dm, dg, n, releases)
        if found is None:
            self.never_fits.add((dc, dm, dg, n))
            self.wait(job, q, "too_large", None)
            return
        at, slots = found
        start = max(at, now)
        self.reserved_at = start
        ids = self.cluster.ids
        estimate = None if start == INF else start
        self.reservation = Reservation(job.job_id, estimate, tuple(ids[i] for i, _ in slots))
        self.wait(job, q, "reserved", estimate)
