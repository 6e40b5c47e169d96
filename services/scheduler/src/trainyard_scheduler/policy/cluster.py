"""Free capacity of the executors during one pass, and placing replicas on it.

Executors are put once in ascending order of free capacity (gpu, then cpu, then memory): taking
the first that fits puts a job in the smallest hole that holds it (close to best fit, so large
holes stay for large jobs, and CPU jobs go to GPU-less executors first) without sorting the
executors per job.

Free capacity only shrinks during a pass, so an executor that cannot hold a shape now never will
later in the pass: each shape keeps a cursor past the executors known too small, and a failed
gang leaves an upper bound of how many replicas of its shape fit. Both make the scan amortised
over the pass instead of per job.

``shadow`` is the backfill constraint: for the executors a reservation will use, the room left at
the reserved start after the reserved job is given its share. A job that may still be running at
that start ("long") must fit in both the free room now and the shadow.
"""

from __future__ import annotations

from collections.abc import Sequence

from trainyard_scheduler.policy.model import ExecutorFree

EPS = 1e-9
Shape = tuple[float, float, float, bool]
Slots = list[tuple[int, int]]  # (executor index, replicas there)


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


class Cluster:
    def __init__(self, executors: Sequence[ExecutorFree]) -> None:
        order = sorted(executors, key=lambda e: (e.free.gpu, e.free.cpu, e.free.memory, e.executor_id))
        self.ids = [e.executor_id for e in order]
        self.index = {eid: i for i, eid in enumerate(self.ids)}
        self.cpu = [float(e.free.cpu) for e in order]
        self.mem = [float(e.free.memory) for e in order]
        self.gpu = [float(e.free.gpu) for e in order]
        self.shadow: dict[int, list[float]] = {}
        self._cursor: dict[Shape, int] = {}
        self._cap: dict[Shape, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    # -- placing ------------------------------------------------------------------------------

    def _fits(self, i: int, dc: float, dm: float, dg: float, long: bool) -> bool:
        if self.cpu[i] + EPS < dc or self.mem[i] < dm or self.gpu[i] < dg:
            return False
        if long:
            sh = self.shadow.get(i)
            if sh is not None and (sh[0] + EPS < dc or sh[1] < dm or sh[2] < dg):
                return False
        return True

    def _first(self, dc: float, dm: float, dg: float, long: bool) -> int:
        key = (dc, dm, dg, long)
        i = self._cursor.get(key, 0)
        n = len(self.ids)
        cpu, mem, gpu = self.cpu, self.mem, self.gpu
        if long and self.shadow:
            while i < n and not self._fits(i, dc, dm, dg, True):
                i += 1
        else:
            while i < n and (cpu[i] + EPS < dc or mem[i] < dm or gpu[i] < dg):
                i += 1
        self._cursor[key] = i
        return i if i < n else -1

    def room(self, i: int, long: bool) -> tuple[float, float, float]:
        c, m, g = self.cpu[i], self.mem[i], self.gpu[i]
        if long:
            sh = self.shadow.get(i)
            if sh is not None:
                c, m, g = min(c, sh[0]), min(m, sh[1]), min(g, sh[2])
        return c, m, g

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
        while i < size:
            c, m, g = self.room(i, long)
            k = replicas_in(c, m, g, dc, dm, dg, n - total)
            if k:
                slots.append((i, k))
                total += k
                if total >= n:
                    return slots
            i += 1
        self._cap[key] = total  # exact now, and an upper bound for the rest of the pass
        return None

    def take(self, slots: Slots, dc: float, dm: float, dg: float, long: bool) -> None:
        for i, k in slots:
            self.cpu[i] -= dc * k
            self.mem[i] -= dm * k
            self.gpu[i] -= dg * k
            if long:
                sh = self.shadow.get(i)
                if sh is not None:
                    sh[0] -= dc * k
                    sh[1] -= dm * k
                    sh[2] -= dg * k

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
        releases: list[tuple[float, int, float, float, float]],
    ) -> tuple[float, Slots] | None:
        """The earliest release time after which n replicas fit, and where they would go then.

        ``releases`` are (time, executor index, cpu, memory, gpu) sorted by time; a time of
        infinity is a job without a timeout. None: it does not fit even when all have ended.
        """
        cpu, mem, gpu = list(self.cpu), list(self.mem), list(self.gpu)
        size = len(cpu)
        k = [replicas_in(cpu[i], mem[i], gpu[i], dc, dm, dg, n) for i in range(size)]
        total = sum(k)
        at = float("-inf")
        j = 0
        while total < n and j < len(releases):
            at = releases[j][0]
            while j < len(releases) and releases[j][0] == at:
                _, i, c, m, g = releases[j]
                cpu[i] += c
                mem[i] += m
                gpu[i] += g
                new = replicas_in(cpu[i], mem[i], gpu[i], dc, dm, dg, n)
                total += new - k[i]
                k[i] = new
                j += 1
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
        for i, r in slots:
            self.shadow[i] = [cpu[i] - dc * r, mem[i] - dm * r, gpu[i] - dg * r]
        return at, slots
