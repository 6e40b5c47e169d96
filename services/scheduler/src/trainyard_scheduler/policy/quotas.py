"""Queue accounting for one pass: usage, quotas with cohort borrowing, weighted dominant shares.

The model is Kueue's ClusterQueue and cohort. A queue without a cohort may use up to its nominal
quota. A queue in a cohort may use up to nominal + borrowing limit, and only while the cohort as a
whole stays within the sum of its members' nominal quotas (it borrows what the others leave
unused). ``None`` in a quota means unlimited. Only the resources a job asks for are checked, so a
queue already over its memory quota (its quota was lowered) can still start a job that asks for no
memory... which no real job does, but the rule stays simple and monotone.
"""

from __future__ import annotations

from collections.abc import Iterable

from trainyard_contracts.queues import QueueConfig, Quota

INF = float("inf")
EPS = 1e-9
RESOURCE_NAMES = ("cpu", "memory", "gpu")


def _amounts(quota: Quota) -> list[float]:
    return [INF if v is None else float(v) for v in (quota.cpu, quota.memory, quota.gpu)]


class QueueBook:
    """Indexes queues by position so the planner's inner loop works on lists, not dicts."""

    def __init__(self, configs: Iterable[QueueConfig], totals: tuple[float, float, float]) -> None:
        self.index: dict[str, int] = {}
        self.names: list[str] = []
        self.weight: list[float] = []
        self.nominal: list[list[float]] = []
        self.limit: list[list[float]] = []
        self.cohort_of: list[int] = []
        self.preemptible_default: list[bool] = []
        self.limited: list[bool] = []
        self.use: list[list[float]] = []
        self.cohorts: dict[str, int] = {}
        self.cohort_cap: list[list[float]] = []
        self.cohort_use: list[list[float]] = []
        self.set_totals(totals)
        for config in configs:
            self._add(config)

    def set_totals(self, totals: tuple[float, float, float]) -> None:
        """The cluster's capacity per resource, which shares are fractions of."""
        self.inverse_total = [1.0 / t if t > 0 else 0.0 for t in totals]

    def _add(self, config: QueueConfig) -> int:
        q = len(self.names)
        self.index[config.name] = q
        self.names.append(config.name)
        self.weight.append(config.weight)
        nominal = _amounts(config.quota)
        self.nominal.append(nominal)
        if config.cohort is None:
            self.cohort_of.append(-1)
            self.limit.append(list(nominal))
        else:
            borrow = _amounts(config.borrowing_limit)
            self.limit.append([n + b for n, b in zip(nominal, borrow, strict=True)])
            k = self.cohorts.get(config.cohort)
            if k is None:
                k = self.cohorts[config.cohort] = len(self.cohort_cap)
                self.cohort_cap.append([0.0, 0.0, 0.0])
                self.cohort_use.append([0.0, 0.0, 0.0])
            cap = self.cohort_cap[k]
            for r in range(3):
                cap[r] += nominal[r]
            self.cohort_of.append(k)
        self.preemptible_default.append(config.preemptible_by_default)
        self.limited.append(config.cohort is not None or any(v < INF for v in nominal))
        self.use.append([0.0, 0.0, 0.0])
        return q

    def of(self, name: str) -> int:
        """The queue's index; a queue nobody configured is unlimited, weight 1, no cohort."""
        q = self.index.get(name)
        return q if q is not None else self._add(QueueConfig(name=name))

    def add(self, q: int, cpu: float, memory: float, gpu: float) -> None:
        u = self.use[q]
        u[0] += cpu
        u[1] += memory
        u[2] += gpu
        k = self.cohort_of[q]
        if k >= 0:
            c = self.cohort_use[k]
            c[0] += cpu
            c[1] += memory
            c[2] += gpu

    def short(
        self,
        q: int,
        cpu: float,
        memory: float,
        gpu: float,
        back: tuple[float, float, float] = (0.0, 0.0, 0.0),
        cohort_back: tuple[float, float, float] = (0.0, 0.0, 0.0),
    ) -> str:
        """'' when the queue may take this much more; otherwise what stops it, for the reason.

        ``back`` / ``cohort_back``: usage of the queue / its cohort that is about to be given
        back (preemption victims), counted as already gone.
        """
        if not self.limited[q]:
            return ""
        u, lim = self.use[q], self.limit[q]
        need = (cpu, memory, gpu)
        for r in range(3):
            if need[r] > 0 and u[r] - back[r] + need[r] > lim[r] + EPS:
                return RESOURCE_NAMES[r]
        k = self.cohort_of[q]
        if k >= 0:
            cu, cap = self.cohort_use[k], self.cohort_cap[k]
            for r in range(3):
                if need[r] > 0 and cu[r] - cohort_back[r] + need[r] > cap[r] + EPS:
                    return "cohort " + RESOURCE_NAMES[r]
        return ""

    def dominant(self, q: int) -> float:
        u, inv = self.use[q], self.inverse_total
        return max(u[0] * inv[0], u[1] * inv[1], u[2] * inv[2])

    def weighted_share(self, q: int) -> float:
        return self.dominant(q) / self.weight[q]

    def share_after(self, q: int, cpu: float, memory: float, gpu: float) -> float:
        u, inv = self.use[q], self.inverse_total
        return max((u[0] + cpu) * inv[0], (u[1] + memory) * inv[1], (u[2] + gpu) * inv[2]) / self.weight[q]
