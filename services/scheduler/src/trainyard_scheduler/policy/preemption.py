"""Preemption: who may be stopped so that a blocked job can start, and the choice of victims.

A job that cannot start may stop running jobs that are preemptible and of lower priority, or (same
priority, another queue) of a queue over its fair share while the job's queue is under it and
stays at or below the victim's share afterwards (no ping-pong). Jobs already stopping come first:
their room costs nothing. Victims: on one executor for a single replica (the executor needing the
fewest, then the least work lost), greedy then pruned for a gang; youngest first. Only when the
job fits once they are gone.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import TYPE_CHECKING

from trainyard_scheduler.policy.cluster import EPS, Release, Slots, replicas_in
from trainyard_scheduler.policy.model import PendingJob, Victim
from trainyard_scheduler.policy.quotas import INF
from trainyard_scheduler.policy.running import RunningGroup

if TYPE_CHECKING:
    from trainyard_scheduler.policy.planner import Pass

# preemption looks at many running jobs; a pass tries it for at most this many distinct blocked jobs
MAX_PREEMPTION_ATTEMPTS = 8
# and considers at most this many of the least important running jobs as victims for one job
MAX_VICTIM_CANDIDATES = 256

Option = tuple[RunningGroup, str]  # a victim and why it may be stopped


class Preemption:
    """The preemption of one pass: its candidates in order, and what it has tried."""

    def __init__(self, p: Pass) -> None:
        self.p = p
        running = p.running
        # least important first: lowest priority, then youngest. A search looks at the first few
        # hundred at most, so they are kept as a heap and put in order only as far as a search
        # reads (job ids are unique: the key decides, never the group)
        self._heap = running.candidates
        self._in_order: list[RunningGroup] = []
        self._heapified = False
        self.min_victim_priority = min((c.priority for c in self._heap), default=None)
        self.failed: set[tuple[int, int, float, float, float, int]] = set()
        self.attempts = 0

    def candidates(self) -> Iterator[RunningGroup]:
        """The preemption candidates in order (lowest priority, then youngest, then job id)."""
        in_order = self._in_order
        heap = self._heap
        i = 0
        while True:
            if i < len(in_order):
                yield in_order[i]
                i += 1
            elif heap:
                if not self._heapified:
                    heapq.heapify(heap)
                    self._heapified = True
                in_order.append(heapq.heappop(heap).group)
            else:
                return

    def eligible(self, job: PendingJob, q: int, need: tuple[float, float, float]) -> Iterator[Option]:
        """Who may be stopped for job, least important first, with why."""
        p = self.p
        book = p.book
        for g in p.running.ending:
            if not g.gone:
                yield g, "already stopping"
        under = book.dominant(q) < p.fair[q]
        over = [book.dominant(i) > p.fair[i] for i in range(len(book.names))]
        share_after = book.share_after(q, *need)
        priority = job.priority
        offered = 0
        for g in self.candidates():
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

    def try_for(self, job: PendingJob, q: int, dc: float, dm: float, dg: float, n: int) -> bool:
        """Stop victims so that job can start once they have gone; True when it did."""
        p = self.p
        if not p.running.ending and (
            self.min_victim_priority is None
            or (self.min_victim_priority >= job.priority and p.book.dominant(q) >= p.fair[q])
        ):
            return False
        key = (q, job.priority, dc, dm, dg, n)
        if key in self.failed or self.attempts >= MAX_PREEMPTION_ATTEMPTS:
            return False
        self.attempts += 1
        need = (dc * n, dm * n, dg * n)
        eligible = self.eligible(job, q, need)
        search = VictimSearch(p, q, dc, dm, dg, n, need)
        picked = search.single(eligible) if n == 1 else search.gang(eligible)
        if picked is None or not self._apply(job, q, dc, dm, dg, n, picked):
            self.failed.add(key)
            return False
        return True

    def _apply(
        self,
        job: PendingJob,
        q: int,
        dc: float,
        dm: float,
        dg: float,
        n: int,
        picked: list[Option],
    ) -> bool:
        p = self.p
        cl, now = p.cluster, p.now
        released = _released(picked)
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
            p.releases.append(
                Release(now, i, max(0.0, r[0] - a[0]), max(0.0, r[1] - a[1]), max(0.0, r[2] - a[2]))
            )
            if k:
                p.releases.append(Release(end, i, a[0], a[1], a[2]))
        cl.take(extra, dc, dm, dg, False)
        p.releases.extend(Release(end, i, dc * k, dm * k, dg * k) for i, k in extra)
        ids = cl.ids
        for g, reason in picked:
            g.gone = True
            if not g.ending:
                for _, c, m, gp in g.rows:
                    p.book.add(g.queue, -c, -m, -gp)
                for i in dict.fromkeys(row[0] for row in g.rows):
                    p.victims.append(Victim(g.job_id, g.attempt, ids[i], reason, job.job_id))
        p.book.add(q, dc * n, dm * n, dg * n)
        p.claims.append(p.assignment(job, slots + extra))
        p.wait(job, q, "preempting", now)
        return True


def _released(picked: list[Option]) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for g, _ in picked:
        for i, c, m, gp in g.rows:
            r = out.setdefault(i, [0.0, 0.0, 0.0])
            r[0] += c
            r[1] += m
            r[2] += gp
    return out


class VictimSearch:
    """Chooses victims for one blocked job; every step is incremental (running totals of what
    the victims give back, per executor and per queue), so a search costs about one look at
    each eligible job."""

    def __init__(
        self, p: Pass, q: int, dc: float, dm: float, dg: float, n: int, need: tuple[float, float, float]
    ) -> None:
        self.p, self.q, self.dc, self.dm, self.dg, self.n, self.need = p, q, dc, dm, dg, n, need
        self.cohort = p.book.cohort_of[q]

    def _quota_back(self, g: RunningGroup, back: list[float], cohort_back: list[float], sign: float) -> None:
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

    def single(self, eligible: Iterator[Option]) -> list[Option] | None:
        """One victim if one is enough (the first, least important, that is); otherwise the
        executor where the fewest victims (then the least work lost) make room."""
        cl = self.p.cluster
        dc, dm, dg = self.dc, self.dm, self.dg
        seen: list[Option] = []
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

    def _fewest(self, eligible: list[Option]) -> list[Option] | None:
        by_executor: dict[int, dict[str, tuple[RunningGroup, str, list[float]]]] = {}
        for g, reason in eligible:
            for i, c, m, gp in g.rows:
                held = by_executor.setdefault(i, {}).setdefault(g.job_id, (g, reason, [0.0, 0.0, 0.0]))[2]
                held[0] += c
                held[1] += m
                held[2] += gp
        cl, now = self.p.cluster, self.p.now
        dc, dm, dg = self.dc, self.dm, self.dg
        best: tuple[tuple[int, float, int], list[Option]] | None = None
        for i, options in by_executor.items():
            c, m, gp = cl.cpu[i], cl.mem[i], cl.gpu[i]
            picked: list[Option] = []
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

    def _hopeless(self, options: list[Option]) -> bool:
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

    def _cheapest_prefixes(self, options: list[Option]) -> list[tuple[float, int, list[Option]]]:
        """Per executor, the prefix of its victims (least important first) with the most replicas
        gained per job stopped; the executors where that ratio is best come first."""
        cl = self.p.cluster
        dc, dm, dg, n = self.dc, self.dm, self.dg, self.n
        by_executor: dict[int, dict[str, tuple[tuple[RunningGroup, str], list[float]]]] = {}
        for option in options:
            for i, c, m, gp in option[0].rows:
                held = by_executor.setdefault(i, {}).setdefault(option[0].job_id, (option, [0.0, 0.0, 0.0]))[
                    1
                ]
                held[0] += c
                held[1] += m
                held[2] += gp
        steps: list[tuple[float, int, list[Option]]] = []
        for i, held_here in by_executor.items():
            c, m, gp = cl.cpu[i], cl.mem[i], cl.gpu[i]
            k0 = replicas_in(c, m, gp, dc, dm, dg, n)
            prefix: list[Option] = []
            stopped = 0
            best: tuple[float, list[Option]] | None = None
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
        return steps

    def gang(self, eligible: Iterator[Option]) -> list[Option] | None:
        """Executors first where stopping few jobs frees room for many replicas, until the gang
        fits; then drop every victim that turned out not to be needed."""
        cl = self.p.cluster
        dc, dm, dg, n = self.dc, self.dm, self.dg, self.n
        options = list(eligible)
        if self._hopeless(options):
            return None
        steps = self._cheapest_prefixes(options)
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

        def move(g: RunningGroup, sign: float) -> int:
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

        picked: dict[str, tuple[RunningGroup, str]] = {}
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
