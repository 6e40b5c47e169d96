"""Free capacity of the executors during one pass, and placing replicas on it.

Executors are put once in ascending order of free capacity (gpu, then cpu, then memory): taking
the first that fits puts a job in the smallest hole that holds it (close to best fit, so large
holes stay for large jobs, and CPU jobs go to GPU-less executors first) without sorting the
executors per job.

Free capacity only shrinks during a pass, so an executor that cannot hold a shape now never will
later in the pass: each shape keeps a cursor past the executors known too small, and a failed
gang leaves an upper bound of how many replicas of its shape fit. Both make the scan amortised
over the pass instead of per job. A shape that asks for more of one resource than any executor
had free at the start of the pass (a whole gang on one executor, a GPU shape on a busy cluster)
starts with its cursor past the end instead of scanning every executor once.

``shadow`` is the backfill constraint: for the executors a reservation will use, the room left at
the reserved start after the reserved job is given its share. A job that may still be running at
that start ("long") must fit in both the free room now and the shadow. Once a shadow exists the
room of a long job, min(free, shadow) per resource, is kept in arrays of its own (``lcpu``...),
updated by ``take``, so the scan for a long job is the same tight loop as for a short one.

``best()``: the most free of each resource on one executor (for the reasons), kept as (value,
index) and recomputed only when that executor's room went down: free room only shrinks in a
pass, so the cached maximum stays the maximum while its executor still has it.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import NamedTuple

from trainyard_scheduler.policy.model import ExecutorFree, RankPlacement

EPS = 1e-9
INF = float("inf")
BLOCK_SHIFT = 5
BLOCK = 1 << BLOCK_SHIFT  # executors per block of the scan's skip list
Shape = tuple[float, float, float, bool]
Slots = list[tuple[int, int]]  # (executor index, replicas there)


class Release(NamedTuple):
    """Room that comes back at ``at`` on executor ``executor`` (an index of the pass's cluster);
    the reservation pops these from a heap, earliest first."""

    at: float
    executor: int
    cpu: float
    memory: float
    gpu: float


def replicas_in(cpu: float, memory: float, gpu: float, dc: float, dm: float, dg: float, most: int) -> int:
    """How many replicas of (dc, dm, dg) fit in (cpu, memory, gpu), at most ``most``."""
    k = most
    if dc > 0:
        k = min(k, int((cpu + EPS) / dc))
    if dm > 0:
        k = min(k, int(memory // dm))
    if dg > 0:
        k = min(k, int(gpu // dg))
    return k if k > 0 else 0


# replicas_in(...) is 0 exactly when this holds (most >= 1): the same expressions, without a call;
# scans test it first because most executors they pass hold no replica at all
#     (dc > 0 and (cpu + EPS) / dc < 1) or (dm > 0 and memory // dm < 1) or (dg > 0 and gpu // dg < 1)


class Cluster:
    def __init__(self, executors: Sequence[ExecutorFree]) -> None:
        order = sorted(executors, key=lambda e: (e.free.gpu, e.free.cpu, e.free.memory, e.executor_id))
        self.ids = [e.executor_id for e in order]
        self.index = {eid: i for i, eid in enumerate(self.ids)}
        self.cpu = [float(e.free.cpu) for e in order]
        self.mem = [float(e.free.memory) for e in order]
        self.gpu = [float(e.free.gpu) for e in order]
        self.shadow: dict[int, list[float]] = {}
        # room for a long job: the free arrays themselves until a reservation casts a shadow
        self.lcpu, self.lmem, self.lgpu = self.cpu, self.mem, self.gpu
        self._cursor: dict[Shape, int] = {}
        # free room only shrinks: a shape larger than the most any executor had free at the
        # start of the pass (in one resource) never fits, and its cursor starts past the end
        self._start_best = (
            max(self.cpu, default=0.0),
            max(self.mem, default=0.0),
            max(self.gpu, default=0.0),
        )
        self._cap: dict[Shape, int] = {}
        self._best: list[tuple[float, int]] | None = None  # (value, executor) per resource
        self._placements: dict[tuple[int, int], tuple[RankPlacement, ...]] = {}
        self.singles: list[tuple[RankPlacement, ...] | None] = [None] * len(self.ids)
        # per block of BLOCK executors, an upper bound of each resource's free room (long rooms
        # are never larger): a scan skips a block whose bound is too small in one resource.
        # Free room only shrinks, so a bound stays a bound; it is made exact again when a scan
        # finds nothing in its block
        self._bounds = [self._bound(b) for b in range(0, len(self.ids), BLOCK)]

    def __len__(self) -> int:
        return len(self.ids)

    # -- placing ------------------------------------------------------------------------------

    def _bound(self, start: int) -> tuple[float, float, float]:
        end = start + BLOCK
        out = []
        for a in (self.cpu, self.mem, self.gpu):
            part = a[start:end]
            top = max(part)
            total = sum(part)
            # NaN anywhere (a NaN fits every comparison's "else"): no bound, never skipped
            out.append(top if top == top and total == total else INF)
        return out[0], out[1], out[2]

    def _scan(self, i: int, dc: float, dm: float, dg: float, long: bool) -> int:
        """The first executor from i on where the shape fits; len(ids) when none. Exactly the
        plain scan, with blocks skipped whose bound says none of them fits."""
        n = len(self.ids)
        cpu, mem, gpu = self.room_lists(long)
        # up to the end of i's block, one by one
        while i < n and (cpu[i] + EPS < dc or mem[i] < dm or gpu[i] < dg):
            i += 1
            if not i & (BLOCK - 1):
                break
        else:
            return i
        bounds = self._bounds
        while i < n:
            bc, bm, bg = bounds[i >> BLOCK_SHIFT]
            end = i + BLOCK if i + BLOCK < n else n
            if bc + EPS < dc or bm < dm or bg < dg:
                i = end
                continue
            for j in range(i, end):
                if not (cpu[j] + EPS < dc or mem[j] < dm or gpu[j] < dg):
                    return j
            bounds[i >> BLOCK_SHIFT] = self._bound(i)
            i = end
        return n

    def _first(self, dc: float, dm: float, dg: float, long: bool) -> int:
        key = (dc, dm, dg, long)
        n = len(self.ids)
        i = self._cursor.get(key, -1)
        if i < 0:
            top = self._start_best
            i = n if dc > top[0] + EPS or dm > top[1] or dg > top[2] else 0
        cpu, mem, gpu = self.room_lists(long)
        if i < n and (cpu[i] + EPS < dc or mem[i] < dm or gpu[i] < dg):
            i = self._scan(i, dc, dm, dg, long)
        self._cursor[key] = i
        return i if i < n else -1

    def room_lists(self, long: bool) -> tuple[list[float], list[float], list[float]]:
        """Free CPU, memory and GPU per executor, for a long job (outside the shadow) or any."""
        if long:
            return self.lcpu, self.lmem, self.lgpu
        return self.cpu, self.mem, self.gpu

    def room(self, i: int, long: bool) -> tuple[float, float, float]:
        if long:
            return self.lcpu[i], self.lmem[i], self.lgpu[i]
        return self.cpu[i], self.mem[i], self.gpu[i]

    def find(self, dc: float, dm: float, dg: float, n: int, long: bool) -> Slots | None:
        """Where n replicas would go now (all-or-nothing), without taking anything."""
        key = (dc, dm, dg, long)
        cap = self._cap.get(key)
        if cap is not None and cap < n:
            return None
        i = self._first(dc, dm, dg, long)
        if i < 0:
            self._cap[key] = 0
            return None
        if n == 1:
            return [(i, 1)]
        whole = self._first(dc * n, dm * n, dg * n, long)
        if whole >= 0:
            return [(whole, n)]
        # no executor holds the whole gang: spread it, first fit from the smallest that holds one
        slots: Slots = []
        total = 0
        size = len(self.ids)
        cpu, mem, gpu = self.room_lists(long)
        hc, hm, hg = dc > 0, dm > 0, dg > 0
        while i < size:
            c, m, g = cpu[i], mem[i], gpu[i]
            if (hc and (c + EPS) / dc < 1) or (hm and m // dm < 1) or (hg and g // dg < 1):
                i += 1
                continue
            k = replicas_in(c, m, g, dc, dm, dg, n - total)
            if k:
                slots.append((i, k))
                total += k
                if total >= n:
                    return slots
            i += 1
        self._cap[key] = total  # exact now, and an upper bound for the rest of the pass
        return None

    def place_one(self, dc: float, dm: float, dg: float, long: bool) -> int:
        """find(n=1) and take in one step: the executor index taken, or -1 (nothing taken)."""
        i = self._first(dc, dm, dg, long)
        if i < 0:
            self._cap[(dc, dm, dg, long)] = 0
            return -1
        if self.shadow:
            self.take([(i, 1)], dc, dm, dg, long)
        else:
            cpu, mem, gpu = self.room_lists(long)
            cpu[i] -= dc
            mem[i] -= dm
            gpu[i] -= dg
        return i

    def take(self, slots: Slots, dc: float, dm: float, dg: float, long: bool) -> None:
        cpu, mem, gpu, shadow = self.cpu, self.mem, self.gpu, self.shadow
        for i, k in slots:
            cpu[i] -= dc * k
            mem[i] -= dm * k
            gpu[i] -= dg * k
            if shadow:
                sh = shadow.get(i)
                if sh is None:
                    self.lcpu[i], self.lmem[i], self.lgpu[i] = cpu[i], mem[i], gpu[i]
                else:
                    if long:
                        sh[0] -= dc * k
                        sh[1] -= dm * k
                        sh[2] -= dg * k
                    self._shade(i)

    def _shade(self, i: int) -> None:
        """The room of a long job on a shadowed executor (min, not arithmetic: exact values)."""
        sh = self.shadow[i]
        self.lcpu[i] = min(self.cpu[i], sh[0])
        self.lmem[i] = min(self.mem[i], sh[1])
        self.lgpu[i] = min(self.gpu[i], sh[2])

    def reduce(self, i: int, cpu: float, memory: float, gpu: float) -> None:
        """Free room taken outside ``take`` (a preempting job's claim, before any reservation);
        negative amounts give it back."""
        self.cpu[i] -= cpu
        self.mem[i] -= memory
        self.gpu[i] -= gpu
        if cpu < 0 or memory < 0 or gpu < 0:
            self._best = None  # room grew: the cached maxima may be stale, and the block's bound
            self._bounds[i >> BLOCK_SHIFT] = self._bound(i >> BLOCK_SHIFT << BLOCK_SHIFT)

    def best(self) -> tuple[float, float, float]:
        """The most free cpu, memory and gpu on any one executor (each on its own)."""
        if not self.ids:
            return 0.0, 0.0, 0.0
        cached = self._best
        if cached is None:
            cached = self._best = [(0.0, -1)] * 3
        out = []
        for r, a in enumerate((self.cpu, self.mem, self.gpu)):
            v, i = cached[r]
            if i < 0 or a[i] != v:  # its executor's room went down: recompute this one
                v = max(a)
                cached[r] = (v, a.index(v))
            out.append(v)
        return out[0], out[1], out[2]

    def single(self, i: int) -> tuple[RankPlacement, ...]:
        """The placement of a one-replica job on executor i (shared, immutable; callers in a
        hurry read ``singles[i]`` first)."""
        one = self.singles[i]
        if one is None:
            one = self.singles[i] = self._placements[(i, 1)] = (RankPlacement(self.ids[i], (0,)),)
        return one

    def placements(self, slots: Slots) -> tuple[RankPlacement, ...]:
        """Ranks 0..n-1 in slot order; a job on one executor shares one immutable tuple with
        every other job of its size there."""
        if len(slots) == 1:
            key = slots[0]
            if key[1] == 1:
                return self.single(key[0])
            one = self._placements.get(key)
            if one is None:
                one = self._placements[key] = (RankPlacement(self.ids[key[0]], tuple(range(key[1]))),)
            return one
        ranks: list[RankPlacement] = []
        rank = 0
        for i, k in slots:
            ranks.append(RankPlacement(self.ids[i], tuple(range(rank, rank + k))))
            rank += k
        return tuple(ranks)

    def count(self, dc: float, dm: float, dg: float, most: int) -> int:
        """Replicas of a shape that fit now in total (ignoring the shadow), at most ``most``."""
        i = max(self._cursor.get((dc, dm, dg, False), 0), 0)
        total = 0
        cpu, mem, gpu = self.cpu, self.mem, self.gpu
        for j in range(i, len(self.ids)):
            total += replicas_in(cpu[j], mem[j], gpu[j], dc, dm, dg, most - total)
            if total >= most:
                break
        return total

    # -- the reservation --------------------------------------------------------------------

    def earliest(
        self,
        dc: float,
        dm: float,
        dg: float,
        n: int,
        releases: list[Release],
    ) -> tuple[float, Slots] | None:
        """The earliest release time after which n replicas fit, and where they would go then.

        ``releases`` are a heap (heapq): popped in
        sorted order, only as far as needed; it is consumed. A time of infinity is a job without a
        timeout. None: it does not fit even when all have ended.
        """
        cpu, mem, gpu = list(self.cpu), list(self.mem), list(self.gpu)
        size = len(cpu)
        hc, hm, hg = dc > 0, dm > 0, dg > 0
        k = [
            0
            if (hc and (cpu[i] + EPS) / dc < 1) or (hm and mem[i] // dm < 1) or (hg and gpu[i] // dg < 1)
            else replicas_in(cpu[i], mem[i], gpu[i], dc, dm, dg, n)
            for i in range(size)
        ]
        total = sum(k)
        at = float("-inf")
        pop = heapq.heappop
        while total < n and releases:
            at = releases[0][0]
            while releases and releases[0][0] == at:
                _, i, c, m, g = pop(releases)
                c = cpu[i] = cpu[i] + c
                m = mem[i] = mem[i] + m
                g = gpu[i] = gpu[i] + g
                if (hc and (c + EPS) / dc < 1) or (hm and m // dm < 1) or (hg and g // dg < 1):
                    new = 0
                else:
                    new = replicas_in(c, m, g, dc, dm, dg, n)
                total += new - k[i]
                k[i] = new
        if total < n:
            return None
        slots: Slots = []
        whole = next((i for i in range(size) if k[i] >= n), -1)
        if whole >= 0:
            slots = [(whole, n)]
        else:
            got = 0
            for i in range(size):
                if k[i]:
                    take = min(k[i], n - got)
                    slots.append((i, take))
                    got += take
                    if got >= n:
                        break
        if not self.shadow:
            self.lcpu, self.lmem, self.lgpu = list(self.cpu), list(self.mem), list(self.gpu)
        for i, r in slots:
            self.shadow[i] = [cpu[i] - dc * r, mem[i] - dm * r, gpu[i] - dg * r]
            self._shade(i)
        return at, slots
