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
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import attrgetter

from trainyard_scheduler.policy.cluster import EPS, Cluster, Slots, replicas_in
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
from trainyard_scheduler.policy.queues import INF, QueueBook

# preemption looks at many running jobs; a pass tries it for at most this many distinct blocked jobs
MAX_PREEMPTION_ATTEMPTS = 8
# and considers at most this many of the least important running jobs as victims for one job
MAX_VICTIM_CANDIDATES = 256
Release = tuple[float, int, float, float, float]


def _make_waiting(fields: tuple[str, str, WaitKind, int, float | None]) -> Waiting:
    return tuple.__new__(Waiting, fields)


def queue_order(job: PendingJob) -> tuple[int, float, str]:
    """Priority, then submit time (the order within one queue)."""
    return (-job.priority, job.submitted_at, job.job_id)


@dataclass(slots=True)
class _Running:
    """A running job as a victim candidate: every row it holds, by executor index."""

    job_id: str
    attempt: int
    queue: int
    priority: int
    preemptible: bool
    started_at: float
    end: float
    ending: bool
    rows: list[tuple[int, float, float, float]] = field(default_factory=list)
    gone: bool = False
    total: tuple[float, float, float] = (0.0, 0.0, 0.0)


def plan(snapshot: Snapshot, now: float) -> Plan:
    # a pass allocates one small object per waiting job and frees nothing until it ends: the
    # cyclic garbage collector would rescan the whole snapshot again and again for no garbage
    # (measured: half the time of a 100k-job pass), so it is paused for the pass
    paused = gc.isenabled()
    gc.disable()
    try:
        return _Pass(snapshot, now).run()
    finally:
        if paused:
            gc.enable()


class _Pass:
    def __init__(self, snapshot: Snapshot, now: float, *, grouped: bool = False) -> None:
        """``grouped``: read the running jobs the general way even when each holds one row (the
        tests compare both ways)."""
        self.now = now
        self.snapshot = snapshot
        self.cluster = Cluster(snapshot.executors)
        self._simple = (not grouped and self._load_one_row_jobs()) or self._load_groups()
        # preemption candidates, least important first: lowest priority, then youngest. A search
        # looks at the first few hundred at most, so they are kept as a heap and put in order
        # only as far as a search reads (job ids are unique: the key decides, never the group)
        self._candidates_in_order: list[_Running] = []
        self._heapified = False
        self.min_victim_priority = min((c[0] for c in self._candidate_heap), default=None)
        # the fair shares need the pending jobs' queues too: run() finishes them (one look at
        # the pending jobs for everything)
        self.fair: list[float] = []
        book = self.book
        self.failed_preemptions: set[tuple[int, int, float, float, float, int]] = set()
        self.preemption_attempts = 0
        self.releases: list[Release] = []  # of this pass's starts and claims, until the reservation
        self.reservation: Reservation | None = None
        self.reserved_at: float | None = None
        self.assignments: list[Assignment] = []
        self.claims: list[Assignment] = []
        self.victims: list[Victim] = []
        self.waiting: list[Waiting] = []
        self.messages: dict[tuple[object, ...], tuple[WaitKind, str]] = {}
        self.dead: dict[tuple[int, float, float, float, int, bool], tuple[WaitKind, str]] = {}
        self.position = [0] * len(book.names)
        self.never_fits: set[tuple[float, float, float, int]] = set()
        # every executor's capacity (free + running), and, as it does not change in a pass, one
        # answer per shape
        self._capacities: list[tuple[tuple[float, float, float], int]] | None = None
        self._too_large_of: dict[tuple[float, float, float, int], bool] = {}

    # -- the running jobs ---------------------------------------------------------------------

    def _load_one_row_jobs(self) -> bool:
        """The common case, in one look at each row: every running job holds one row (on an
        online executor) and executor ids are unique. Only jobs that can be stopped (preemptible
        or already stopping) become _Running objects; the others are needed only as usage, a
        release time (the reservation) and capacity (the "too large" label), all taken here in
        the order the general case would take them. False (nothing kept) when a job holds two
        rows or an executor id repeats: then _load_groups does it all."""
        cluster, now = self.cluster, self.now
        index = cluster.index
        running = self.snapshot.running
        if len(index) != len(cluster.ids) or len({r.job_id for r in running}) != len(running):
            return False
        book = QueueBook(self.snapshot.queues, (0.0, 0.0, 0.0))
        totals = [sum(cluster.cpu), sum(cluster.mem), sum(cluster.gpu)]
        cap_cpu, cap_mem, cap_gpu = list(cluster.cpu), list(cluster.mem), list(cluster.gpu)
        static: list[Release] = []
        movable: list[_Running] = []
        candidates: list[tuple[int, float, str, _Running]] = []
        ending: list[_Running] = []
        active: set[int] = set()
        default = book.preemptible_default
        queue_of = book.index
        for r in running:
            i = index.get(r.executor_id)
            if i is None:
                continue
            u = r.used
            c, m, gp = u.cpu, u.memory, u.gpu
            totals[0] += c
            totals[1] += m
            totals[2] += gp
            cap_cpu[i] += c
            cap_mem[i] += m
            cap_gpu[i] += gp
            q = queue_of.get(r.queue)
            if q is None:
                q = book.of(r.queue)
            end = INF if r.timeout is None else max(r.started_at + r.timeout, now)
            preemptible = r.preemptible or default[q]
            if not r.ending:
                book.add(q, c, m, gp)
                active.add(q)
                if not preemptible:
                    static.append((end, i, c, m, gp))
                    continue
            g = _Running(
                r.job_id, r.attempt, q, r.priority, preemptible, r.started_at, end, r.ending, [(i, c, m, gp)]
            )
            g.total = (c, m, gp)
            movable.append(g)
            if r.ending:
                ending.append(g)
            else:
                candidates.append((r.priority, -r.started_at, r.job_id, g))
        book.set_totals((totals[0], totals[1], totals[2]))
        self.book = book
        self.groups: dict[str, _Running] = {}  # only _load_groups fills it
        self._static_releases = static
        self._movable = movable
        self._capacity = (cap_cpu, cap_mem, cap_gpu)
        self.active = active
        self._candidate_heap = candidates
        self.ending_groups = ending
        return True

    def _load_groups(self) -> bool:
        """The general case: a job may hold rows on several executors (a gang); it is one group,
        stopped or released as a whole."""
        cluster, now = self.cluster, self.now
        index = cluster.index
        book = self.book = QueueBook(self.snapshot.queues, (0.0, 0.0, 0.0))
        totals = [sum(cluster.cpu), sum(cluster.mem), sum(cluster.gpu)]
        groups: dict[str, _Running] = {}
        for r in self.snapshot.running:
            i = index.get(r.executor_id)
            if i is None:
                continue
            u = r.used
            c, m, gp = u.cpu, u.memory, u.gpu
            totals[0] += c
            totals[1] += m
            totals[2] += gp
            g = groups.get(r.job_id)
            if g is None:
                q = book.of(r.queue)
                end = INF if r.timeout is None else max(r.started_at + r.timeout, now)
                g = groups[r.job_id] = _Running(
                    r.job_id,
                    r.attempt,
                    q,
                    r.priority,
                    r.preemptible or book.preemptible_default[q],
                    r.started_at,
                    end,
                    r.ending,
                    [(i, c, m, gp)],
                    False,
                    (c, m, gp),
                )
            else:
                g.ending = g.ending or r.ending
                g.rows.append((i, c, m, gp))
                t = g.total
                g.total = (t[0] + c, t[1] + m, t[2] + gp)
        book.set_totals((totals[0], totals[1], totals[2]))
        for g in groups.values():
            if not g.ending:
                book.add(g.queue, *g.total)
        self.groups = groups
        self.active = {g.queue for g in groups.values() if not g.ending}
        self._candidate_heap = [
            (g.priority, -g.started_at, g.job_id, g)
            for g in groups.values()
            if g.preemptible and not g.ending
        ]
        self.ending_groups = [g for g in groups.values() if g.ending]
        self._static_releases = []
        self._movable = []
        self._capacity = ([], [], [])
        return False

    # -- the pass ---------------------------------------------------------------------------

    def run(self) -> Plan:
        book = self.book
        pending = self.snapshot.pending
        index = book.index
        classes: dict[int, dict[int, list[PendingJob]]] = {}
        for job in pending:
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
        active = self.active
        active.update(q for queues in classes.values() for q in queues)
        weights = sum(book.weight[q] for q in active) or 1.0
        self.fair = [w / weights for w in book.weight]
        # a stable sort on submit time alone: equal times keep the snapshot's order
        by_submit = attrgetter("submitted_at")
        position = self.position
        position.extend([0] * (len(book.names) - len(position)))
        decide = self._decide
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
                        # _decide); no call, no attribute of self
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

    def _wait(self, job: PendingJob, q: int, kind: WaitKind, at: float | None, detail: str = "") -> None:
        d = job.demand
        # only quota messages name the queue
        key = (kind, q if kind == "quota" else -1, d.cpu, d.memory, d.gpu, job.replicas, detail)
        said = self.messages.get(key)
        if said is None:
            if (kind == "capacity" or kind == "gang") and self._too_large(job):
                kind = "too_large"
            said = self.messages[key] = (kind, self._message(job, q, kind, detail))
        position = self.position[q] = self.position[q] + 1
        self.waiting.append(_make_waiting((job.job_id, said[1], said[0], position, at)))

    def _decide(self, job: PendingJob, q: int) -> bool:
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
            self._wait(job, q, "no_executor", None)
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
                if self.reservation is None and self._preempt(job, q, dc, dm, dg, n):
                    return True
                self._wait(job, q, "quota", None, short)
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
                    self.releases.append((INF if timeout is None else now + timeout, i, dc, dm, dg))
                return True
            slots = None
        else:
            slots = cluster.find(dc, dm, dg, n, long)
        if slots is not None:
            cluster.take(slots, dc, dm, dg, long)
            self.book.add(q, dc * n, dm * n, dg * n)
            self.assignments.append(self._assignment(job, slots))
            if reserved_at is None:
                end = INF if timeout is None else now + timeout
                self.releases.extend((end, i, dc * k, dm * k, dg * k) for i, k in slots)
            return True
        if self.reservation is None:
            if self._preempt(job, q, dc, dm, dg, n):
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
        self._wait(job, q, kind, None)
        # the label stays that of the first job of this shape (room now may go later in the pass)
        self.dead[(q, dc, dm, dg, n, long)] = (self.waiting[-1].kind, self.waiting[-1].reason)
        return False

    def _assignment(self, job: PendingJob, slots: Slots) -> Assignment:
        ranks = self.cluster.placements(slots)
        return Assignment(job.job_id, job.attempt, ranks[0].executor_id, ranks)

    # -- reservation ------------------------------------------------------------------------

    def _reserve(self, job: PendingJob, q: int, dc: float, dm: float, dg: float, n: int) -> None:
        if (dc, dm, dg, n) in self.never_fits:
            self._wait(job, q, "too_large", None)
            return
        now = self.now
        if self._simple:
            releases = self.releases + self._static_releases
            releases += [
                (now if g.ending else g.end, i, c, m, gp)
                for g in self._movable
                if not g.gone
                for i, c, m, gp in g.rows
            ]
        else:
            releases = self.releases + [
                (now if g.ending else g.end, i, c, m, gp)
                for g in self.groups.values()
                if not g.gone
                for i, c, m, gp in g.rows
            ]
        heapq.heapify(releases)  # earliest pops only as many as it needs, in sorted order
        found = self.cluster.earliest(dc, dm, dg, n, releases)
        if found is None:
            self.never_fits.add((dc, dm, dg, n))
            self._wait(job, q, "too_large", None)
            return
        at, slots = found
        start = max(at, now)
        self.reserved_at = start
        ids = self.cluster.ids
        estimate = None if start == INF else start
        self.reservation = Reservation(job.job_id, estimate, tuple(ids[i] for i, _ in slots))
        self._wait(job, q, "reserved", estimate)

    # -- preemption -------------------------------------------------------------------------

    def _candidates(self) -> Iterator[_Running]:
        """The preemption candidates in order (lowest priority, then youngest, then job id)."""
        in_order = self._candidates_in_order
        heap = self._candidate_heap
        i = 0
        while True:
            if i < len(in_order):
                yield in_order[i]
                i += 1
            elif heap:
                if not self._heapified:
                    heapq.heapify(heap)
                    self._heapified = True
                in_order.append(heapq.heappop(heap)[3])
            else:
                return

    def _eligible(
        self, job: PendingJob, q: int, need: tuple[float, float, float]
    ) -> Iterator[tuple[_Running, str]]:
        """Who may be stopped for job, least important first, with why: first the jobs already
        stopping (their room costs nothing), then preemptible jobs of lower priority, or of the
        same priority in a queue over its fair share while job's queue is under its own and
        stays at or below the victim queue's share afterwards (no ping-pong)."""
        book = self.book
        for g in self.ending_groups:
            if not g.gone:
                yield g, "already stopping"
        under = book.dominant(q) < self.fair[q]
        over = [book.dominant(p) > self.fair[p] for p in range(len(book.names))]
        share_after = book.share_after(q, *need)
        priority = job.priority
        offered = 0
        for g in self._candidates():
            if g.gone:
                continue
            offered += 1
            if offered > MAX_VICTIM_CANDIDATES:
                return
            if g.priority < priority:
                yield g, f"preempted by {job.job_id}: priority {priority} > {g.priority}"
            elif g.priority > priority:
                break  # candidates are sorted by priority: none further is eligible
            elif under and g.queue != q and over[g.queue]:
                t = g.total
                if share_after <= book.share_after(g.queue, -t[0], -t[1], -t[2]) + EPS:
                    yield (
                        g,
                        f"preempted by {job.job_id}: queue {book.names[g.queue]} is over its fair "
                        f"share, queue {book.names[q]} under it",
                    )

    def _preempt(self, job: PendingJob, q: int, dc: float, dm: float, dg: float, n: int) -> bool:
        if not self.ending_groups and (
            self.min_victim_priority is None
            or (self.min_victim_priority >= job.priority and self.book.dominant(q) >= self.fair[q])
        ):
            return False
        key = (q, job.priority, dc, dm, dg, n)
        if key in self.failed_preemptions or self.preemption_attempts >= MAX_PREEMPTION_ATTEMPTS:
            return False
        self.preemption_attempts += 1
        need = (dc * n, dm * n, dg * n)
        eligible = self._eligible(job, q, need)
        search = _VictimSearch(self, q, dc, dm, dg, n, need)
        picked = search.single(eligible) if n == 1 else search.gang(eligible)
        if picked is None or not self._apply_preemption(job, q, dc, dm, dg, n, picked):
            self.failed_preemptions.add(key)
            return False
        return True

    def _released(self, picked: list[tuple[_Running, str]]) -> dict[int, list[float]]:
        out: dict[int, list[float]] = {}
        for g, _ in picked:
            for i, c, m, gp in g.rows:
                r = out.setdefault(i, [0.0, 0.0, 0.0])
                r[0] += c
                r[1] += m
                r[2] += gp
        return out

    def _apply_preemption(
        self,
        job: PendingJob,
        q: int,
        dc: float,
        dm: float,
        dg: float,
        n: int,
        picked: list[tuple[_Running, str]],
    ) -> bool:
        cl, now = self.cluster, self.now
        released = self._released(picked)
        slots: Slots = []
        got = 0
        for i in sorted(released):
            r = released[i]
            k = replicas_in(cl.cpu[i] + r[0], cl.mem[i] + r[1], cl.gpu[i] + r[2], dc, dm, dg, n - got)
            if k:
                slots.append((i, k))
                got += k
                if got >= n:
                    break
        end = INF if job.timeout is None else now + job.timeout
        on_touched = dict(slots)
        # what the job takes beyond what its victims give back comes out of the free room now;
        # what they give back beyond what it takes is free again once they have gone
        taken: list[tuple[int, float, float, float]] = []
        for i, r in released.items():
            k = on_touched.get(i, 0)
            a = (dc * k, dm * k, dg * k)
            taken.append((i, max(0.0, a[0] - r[0]), max(0.0, a[1] - r[1]), max(0.0, a[2] - r[2])))
        for i, c, m, gp in taken:
            cl.reduce(i, c, m, gp)
        extra: Slots = []
        if got < n:
            found = cl.find(dc, dm, dg, n - got, False)
            if found is None:  # never preempt for a job that would still not fit (unreachable:
                # the victims were chosen by an exact count of the replicas that fit)
                for i, c, m, gp in taken:
                    cl.reduce(i, -c, -m, -gp)
                return False
            extra = found
        for i, r in released.items():
            k = on_touched.get(i, 0)
            a = (dc * k, dm * k, dg * k)
            self.releases.append(
                (now, i, max(0.0, r[0] - a[0]), max(0.0, r[1] - a[1]), max(0.0, r[2] - a[2]))
            )
            if k:
                self.releases.append((end, i, a[0], a[1], a[2]))
        cl.take(extra, dc, dm, dg, False)
        self.releases.extend((end, i, dc * k, dm * k, dg * k) for i, k in extra)
        ids = cl.ids
        for g, reason in picked:
            g.gone = True
            if not g.ending:
                for _, c, m, gp in g.rows:
                    self.book.add(g.queue, -c, -m, -gp)
                for i in dict.fromkeys(row[0] for row in g.rows):
                    self.victims.append(Victim(g.job_id, g.attempt, ids[i], reason, job.job_id))
        self.book.add(q, dc * n, dm * n, dg * n)
        self.claims.append(self._assignment(job, slots + extra))
        self._wait(job, q, "preempting", now)
        return True

    # -- reasons ----------------------------------------------------------------------------

    def _too_large(self, job: PendingJob) -> bool:
        """Would not fit even if every running job (and this pass's starts) had ended."""
        d, n = job.demand, job.replicas
        key = (d.cpu, d.memory, d.gpu, n)
        known = self._too_large_of.get(key)
        if known is not None:
            return known
        if self._capacities is None and self._simple:
            self._capacities = list(Counter(zip(*self._capacity, strict=True)).items())
        elif self._capacities is None:
            cl = self.cluster
            cap = [[0.0, 0.0, 0.0] for _ in cl.ids]
            for e in self.snapshot.executors:
                i = cl.index[e.executor_id]
                cap[i] = [float(e.free.cpu), float(e.free.memory), float(e.free.gpu)]
            for g in self.groups.values():
                for i, c, m, gp in g.rows:
                    cap[i][0] += c
                    cap[i][1] += m
                    cap[i][2] += gp
            # executors of one type are one entry: the check is per type, not per executor
            self._capacities = list(Counter((c, m, gp) for c, m, gp in cap).items())
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
            r = self.reservation
            assert r is not None
            when = "when jobs without a timeout end" if r.start is None else f"at {r.start:.0f}"
            return f"next in line: room reserved on {', '.join(r.executors)} {when}"
        if kind == "preempting":
            return "stopping preemptible jobs to make room"
        if kind == "backfill":
            r = self.reservation
            assert r is not None
            return f"room now, but it could still run when {r.job_id} is due to start, and would delay it"
        if kind == "too_large":
            what = f"{n} x ({shape})" if n > 1 else shape
            return f"too large: {what} does not fit on the online executors even when they are idle"
        if kind == "gang":
            fit = self.cluster.count(d.cpu, d.memory, d.gpu, n)
            return f"gang of {n} starts all at once: {fit} of {n} replicas of ({shape}) fit now" + (
                self._short_total(d.cpu * n, d.memory * n, d.gpu * n)
            )
        return "no executor has room: " + self._short_single(d.cpu, d.memory, d.gpu)

    def _quota_message(self, q: int, job: PendingJob, resource: str) -> str:
        book = self.book
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
        best = self.cluster.best()
        short = [
            f"{name} {_amount(r, need)} > {_amount(r, best[r])} free"
            for r, (name, need) in enumerate((("cpu", dc), ("memory", dm), ("gpu", dg)))
            if need > best[r] + EPS
        ]
        return ", ".join(short) or "no single executor has every resource free at once"

    def _short_total(self, dc: float, dm: float, dg: float) -> str:
        cl = self.cluster
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


class _VictimSearch:
    """Chooses victims for one blocked job; every step is incremental (running totals of what
    the victims give back, per executor and per queue), so a search costs about one look at
    each eligible job."""

    def __init__(
        self, p: _Pass, q: int, dc: float, dm: float, dg: float, n: int, need: tuple[float, float, float]
    ) -> None:
        self.p, self.q, self.dc, self.dm, self.dg, self.n, self.need = p, q, dc, dm, dg, n, need
        self.cohort = p.book.cohort_of[q]

    def _quota_back(self, g: _Running, back: list[float], cohort_back: list[float], sign: float) -> None:
        """Victims of the job's own queue (or cohort) give back quota; jobs already stopping
        are not counted in usage any more."""
        if g.ending:
            return
        t = g.total
        book = self.p.book
        if g.queue == self.q:
            for r in range(3):
                back[r] += sign * t[r]
        if self.cohort >= 0 and book.cohort_of[g.queue] == self.cohort:
            for r in range(3):
                cohort_back[r] += sign * t[r]

    def _quota_ok(self, back: list[float], cohort_back: list[float]) -> bool:
        b = (back[0], back[1], back[2])
        cb = (cohort_back[0], cohort_back[1], cohort_back[2])
        return not self.p.book.short(self.q, *self.need, b, cb)

    def single(self, eligible: Iterator[tuple[_Running, str]]) -> list[tuple[_Running, str]] | None:
        """One victim if one is enough (the first, least important, that is); otherwise the
        executor where the fewest victims (then the least work lost) make room."""
        cl = self.p.cluster
        dc, dm, dg = self.dc, self.dm, self.dg
        seen: list[tuple[_Running, str]] = []
        for option in eligible:
            seen.append(option)
            g = option[0]
            held: dict[int, list[float]] = {}
            for i, c, m, gp in g.rows:
                h = held.setdefault(i, [cl.cpu[i], cl.mem[i], cl.gpu[i]])
                h[0] += c
                h[1] += m
                h[2] += gp
            if any(h[0] + EPS >= dc and h[1] >= dm and h[2] >= dg for h in held.values()):
                back, cohort_back = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
                self._quota_back(g, back, cohort_back, 1.0)
                if self._quota_ok(back, cohort_back):
                    return [option]
        return self._fewest(seen)

    def _fewest(self, eligible: list[tuple[_Running, str]]) -> list[tuple[_Running, str]] | None:
        by_executor: dict[int, dict[str, tuple[_Running, str, list[float]]]] = {}
        for g, reason in eligible:
            for i, c, m, gp in g.rows:
                held = by_executor.setdefault(i, {}).setdefault(g.job_id, (g, reason, [0.0, 0.0, 0.0]))[2]
                held[0] += c
                held[1] += m
                held[2] += gp
        cl, now = self.p.cluster, self.p.now
        dc, dm, dg = self.dc, self.dm, self.dg
        best: tuple[tuple[int, float, int], list[tuple[_Running, str]]] | None = None
        for i, options in by_executor.items():
            c, m, gp = cl.cpu[i], cl.mem[i], cl.gpu[i]
            picked: list[tuple[_Running, str]] = []
            back, cohort_back = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
            victims, lost = 0, 0.0
            for g, reason, used in options.values():
                picked.append((g, reason))
                self._quota_back(g, back, cohort_back, 1.0)
                if not g.ending:
                    victims += 1
                    lost += now - g.started_at
                if best is not None and (victims, lost) > best[0][:2]:
                    break  # already worse than the best executor so far
                c, m, gp = c + used[0], m + used[1], gp + used[2]
                if c + EPS >= dc and m >= dm and gp >= dg and self._quota_ok(back, cohort_back):
                    cost = (victims, lost, i)
                    if best is None or cost < best[0]:
                        best = (cost, list(picked))
                    break
        return None if best is None else best[1]

    def _hopeless(self, options: list[tuple[_Running, str]]) -> bool:
        """True when even stopping every eligible job would not make room (or quota) for the
        gang: then the search below cannot succeed, and is not run. Exact, not a heuristic: the
        search adds victims one by one, the replicas that fit and the quota given back only grow
        as it does (usage is never negative), so it succeeds only if all of them together do.
        Their sums here are taken in another order than the search's, hence the slack (a
        millionth) on the side of "not hopeless"."""
        cl = self.p.cluster
        released: dict[int, list[float]] = {}
        back, cohort_back = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
        for g, _ in options:
            for i, c, m, gp in g.rows:
                if c < 0 or m < 0 or gp < 0:
                    return False
                r = released.get(i)
                if r is None:
                    released[i] = [c, m, gp]
                else:
                    r[0] += c
                    r[1] += m
                    r[2] += gp
            self._quota_back(g, back, cohort_back, 1.0)

        def more(x: float) -> float:
            return x + 1e-6 * (1.0 + abs(x))

        dc, dm, dg, n = self.dc, self.dm, self.dg, self.n
        gain = 0
        for i, (c, m, gp) in released.items():
            now = replicas_in(cl.cpu[i], cl.mem[i], cl.gpu[i], dc, dm, dg, n)
            gain += (
                replicas_in(more(cl.cpu[i] + c), more(cl.mem[i] + m), more(cl.gpu[i] + gp), dc, dm, dg, n)
                - now
            )
        if cl.count(dc, dm, dg, n) + gain < n:
            return True
        return not self._quota_ok([more(b) for b in back], [more(b) for b in cohort_back])

    def gang(self, eligible: Iterator[tuple[_Running, str]]) -> list[tuple[_Running, str]] | None:
        """Executors first where stopping few jobs frees room for many replicas, until the gang
        fits; then drop every victim that turned out not to be needed."""
        cl = self.p.cluster
        dc, dm, dg, n = self.dc, self.dm, self.dg, self.n
        options = list(eligible)
        if self._hopeless(options):
            return None
        by_executor: dict[int, dict[str, tuple[tuple[_Running, str], list[float]]]] = {}
        for option in options:
            for i, c, m, gp in option[0].rows:
                held = by_executor.setdefault(i, {}).setdefault(option[0].job_id, (option, [0.0, 0.0, 0.0]))[
                    1
                ]
                held[0] += c
                held[1] += m
                held[2] += gp
        # per executor: the prefix of its victims (least important first) with the most replicas
        # gained per job stopped
        steps: list[tuple[float, int, list[tuple[_Running, str]]]] = []
        for i, held_here in by_executor.items():
            c, m, gp = cl.cpu[i], cl.mem[i], cl.gpu[i]
            k0 = replicas_in(c, m, gp, dc, dm, dg, n)
            prefix: list[tuple[_Running, str]] = []
            stopped = 0
            best: tuple[float, list[tuple[_Running, str]]] | None = None
            for option, used in held_here.values():
                prefix.append(option)
                stopped += 0 if option[0].ending else 1
                c, m, gp = c + used[0], m + used[1], gp + used[2]
                gained = replicas_in(c, m, gp, dc, dm, dg, n) - k0
                if gained > 0:
                    ratio = gained / stopped if stopped else float(n + 1)
                    if best is None or ratio > best[0]:
                        best = (ratio, list(prefix))
            if best is not None:
                steps.append((-best[0], i, best[1]))
        steps.sort(key=lambda s: (s[0], s[1]))
        base = cl.count(dc, dm, dg, n)
        released: dict[int, list[float]] = {}
        back, cohort_back = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]

        def fits_at(i: int) -> int:
            r = released.get(i)
            if r is None:
                return 0
            return replicas_in(cl.cpu[i] + r[0], cl.mem[i] + r[1], cl.gpu[i] + r[2], dc, dm, dg, n) - (
                replicas_in(cl.cpu[i], cl.mem[i], cl.gpu[i], dc, dm, dg, n)
            )

        def move(g: _Running, sign: float) -> int:
            """Add (1) or remove (-1) a victim; returns the change in replicas that fit."""
            touched = dict.fromkeys(row[0] for row in g.rows)
            before = sum(fits_at(i) for i in touched)
            for i, c, m, gp in g.rows:
                r = released.setdefault(i, [0.0, 0.0, 0.0])
                r[0] += sign * c
                r[1] += sign * m
                r[2] += sign * gp
            self._quota_back(g, back, cohort_back, sign)
            return sum(fits_at(i) for i in touched) - before

        picked: dict[str, tuple[_Running, str]] = {}
        gain = 0

        def done() -> bool:
            return base + gain >= n and self._quota_ok(back, cohort_back)

        # room first, executor by executor; then (quota) the queue's own jobs in preference order
        for _, _, prefix in steps:
            for option in prefix:
                if option[0].job_id not in picked:
                    picked[option[0].job_id] = option
                    gain += move(option[0], 1.0)
            if done():
                break
        if not done():
            for option in options:
                if option[0].job_id not in picked:
                    picked[option[0].job_id] = option
                    gain += move(option[0], 1.0)
                    if done():
                        break
            else:
                return None
        for job_id in reversed(list(picked)):
            option = picked[job_id]
            change = move(option[0], -1.0)
            gain += change
            if done():
                del picked[job_id]
            else:
                gain -= change
                move(option[0], 1.0)
        return list(picked.values())
