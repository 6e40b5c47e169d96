"""The running jobs as one pass sees them: usage per queue, release times, preemption candidates.

A job may hold rows on several executors (a gang split across them): it is one ``RunningGroup``,
stopped or released as a whole. The common case, every running job on one row, is read in one
look at each row and keeps ``RunningGroup`` objects only for the jobs that can be stopped; both
readings decide the same (tests/test_policy_indexes.py compares them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from trainyard_scheduler.policy.cluster import Cluster, Release
from trainyard_scheduler.policy.model import Snapshot
from trainyard_scheduler.policy.quotas import INF, QueueBook


class Row(NamedTuple):
    """What a running job holds on one executor (an index of the pass's cluster)."""

    executor: int
    cpu: float
    memory: float
    gpu: float


class Candidate(NamedTuple):
    """A preemption candidate in heap order: lowest priority, then youngest, then job id."""

    priority: int
    minus_started_at: float
    job_id: str
    group: RunningGroup


@dataclass(slots=True)
class RunningGroup:
    """A running job as a victim candidate: every row it holds."""

    job_id: str
    attempt: int
    queue: int
    priority: int
    preemptible: bool
    started_at: float
    end: float
    ending: bool
    rows: list[Row] = field(default_factory=list)
    gone: bool = False
    total: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(slots=True)
class RunningLoad:
    """What the pass needs of the running jobs.

    ``simple``: read the one-row way; then ``groups`` is empty and ``static_releases`` (jobs that
    cannot be stopped), ``movable`` (those that can) and ``capacity`` (every executor's free plus
    running room) are filled instead.
    """

    simple: bool
    book: QueueBook
    active: set[int]
    candidates: list[Candidate]
    ending: list[RunningGroup]
    groups: dict[str, RunningGroup] = field(default_factory=dict)
    static_releases: list[Release] = field(default_factory=list)
    movable: list[RunningGroup] = field(default_factory=list)
    capacity: tuple[list[float], list[float], list[float]] = ([], [], [])

    def releases(self, now: float) -> list[Release]:
        """Every running job's room with the time it comes back (a job already stopping: now)."""
        groups = self.movable if self.simple else self.groups.values()
        moving = [Release(now if g.ending else g.end, *row) for g in groups if not g.gone for row in g.rows]
        return self.static_releases + moving if self.simple else moving


def load_running(snapshot: Snapshot, cluster: Cluster, now: float, *, grouped: bool = False) -> RunningLoad:
    """``grouped``: read the general way even when each job holds one row (tests compare both)."""
    if not grouped:
        load = _load_one_row_jobs(snapshot, cluster, now)
        if load is not None:
            return load
    return _load_groups(snapshot, cluster, now)


def _load_one_row_jobs(snapshot: Snapshot, cluster: Cluster, now: float) -> RunningLoad | None:
    """The common case, in one look at each row: every running job holds one row (on an online
    executor) and executor ids are unique. Only jobs that can be stopped (preemptible or already
    stopping) become groups; the others are needed only as usage, a release time (the
    reservation) and capacity (the "too large" label), all taken here in the order the general
    case would take them. None when a job holds two rows or an executor id repeats."""
    index = cluster.index
    running = snapshot.running
    if len(index) != len(cluster.ids) or len({r.job_id for r in running}) != len(running):
        return None
    book = QueueBook(snapshot.queues, (0.0, 0.0, 0.0))
    totals = [sum(cluster.cpu), sum(cluster.mem), sum(cluster.gpu)]
    cap_cpu, cap_mem, cap_gpu = list(cluster.cpu), list(cluster.mem), list(cluster.gpu)
    static: list[Release] = []
    movable: list[RunningGroup] = []
    candidates: list[Candidate] = []
    ending: list[RunningGroup] = []
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
                static.append(Release(end, i, c, m, gp))
                continue
        g = RunningGroup(
            r.job_id, r.attempt, q, r.priority, preemptible, r.started_at, end, r.ending, [Row(i, c, m, gp)]
        )
        g.total = (c, m, gp)
        movable.append(g)
        if r.ending:
            ending.append(g)
        else:
            candidates.append(Candidate(r.priority, -r.started_at, r.job_id, g))
    book.set_totals((totals[0], totals[1], totals[2]))
    return RunningLoad(
        simple=True,
        book=book,
        active=active,
        candidates=candidates,
        ending=ending,
        static_releases=static,
        movable=movable,
        capacity=(cap_cpu, cap_mem, cap_gpu),
    )


def _load_groups(snapshot: Snapshot, cluster: Cluster, now: float) -> RunningLoad:
    """The general case: a job may hold rows on several executors (a gang)."""
    index = cluster.index
    book = QueueBook(snapshot.queues, (0.0, 0.0, 0.0))
    totals = [sum(cluster.cpu), sum(cluster.mem), sum(cluster.gpu)]
    groups: dict[str, RunningGroup] = {}
    # the same walk over rows as _load_one_row_jobs, inline here too: a per-row generator shared by
    # both costs a measurable share of the pass (docs/performance.md, "Kept out of the code")
    for r in snapshot.running:
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
            g = groups[r.job_id] = RunningGroup(
                r.job_id,
                r.attempt,
                q,
                r.priority,
                r.preemptible or book.preemptible_default[q],
                r.started_at,
                end,
                r.ending,
                [Row(i, c, m, gp)],
                False,
                (c, m, gp),
            )
        else:
            g.ending = g.ending or r.ending
            g.rows.append(Row(i, c, m, gp))
            t = g.total
            g.total = (t[0] + c, t[1] + m, t[2] + gp)
    book.set_totals((totals[0], totals[1], totals[2]))
    for g in groups.values():
        if not g.ending:
            book.add(g.queue, *g.total)
    return RunningLoad(
        simple=False,
        book=book,
        active={g.queue for g in groups.values() if not g.ending},
        candidates=[
            Candidate(g.priority, -g.started_at, g.job_id, g)
            for g in groups.values()
            if g.preemptible and not g.ending
        ],
        ending=[g for g in groups.values() if g.ending],
        groups=groups,
    )
