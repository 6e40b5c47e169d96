"""Properties of the pure policy, checked by hypothesis against small independent references."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainyard_contracts.queues import QueueConfig, Quota
from trainyard_scheduler.policy import Demand, ExecutorFree, PendingJob, Plan, RunningJob, Snapshot, plan

pytestmark = pytest.mark.unit
EPS = 1e-9
QUEUES = ("a", "b", "c")
CAPACITY_KINDS = {"capacity", "too_large"}


def fits(need: tuple[float, float, float], room: tuple[float, float, float]) -> bool:
    return need[0] <= room[0] + EPS and need[1] <= room[1] + EPS and need[2] <= room[2] + EPS


def vec(d: Demand, k: int = 1) -> tuple[float, float, float]:
    return (d.cpu * k, d.memory * k, d.gpu * k)


def add(a, b, sign=1):
    return (a[0] + sign * b[0], a[1] + sign * b[1], a[2] + sign * b[2])


def replicas_that_fit(d: Demand, rooms, most: int) -> int:
    total = 0
    for c, m, g in rooms:
        k = most
        if d.cpu > 0:
            k = min(k, math.floor((c + EPS) / d.cpu))
        if d.memory > 0:
            k = min(k, math.floor(m / d.memory))
        if d.gpu > 0:
            k = min(k, math.floor(g / d.gpu))
        total += max(k, 0)
    return total


def earliest_start(job: PendingJob, free: dict, releases: list, now: float) -> float:
    """Brute force: the first release time after which the job's replicas fit (inf: never)."""
    times = sorted({now} | {t for t, _, _ in releases})
    for t in times:
        room = dict(free)
        for when, eid, used in releases:
            if when <= t:
                room[eid] = add(room[eid], used)
        if replicas_that_fit(job.demand, room.values(), job.replicas) >= job.replicas:
            return t
    return math.inf


demands = st.builds(
    Demand,
    cpu=st.sampled_from([0.5, 1.0, 2.0, 4.0]),
    memory=st.sampled_from([0, 256, 1024, 4096]),
    gpu=st.integers(0, 2),
)
quotas = st.just(Quota()) | st.builds(
    Quota,
    cpu=st.sampled_from([None, None, 2.0, 4.0, 8.0]),
    memory=st.sampled_from([None, None, 2048, 8192]),
    gpu=st.sampled_from([None, None, 1, 3]),
)


@st.composite
def snapshots(draw, preemption: bool):
    executors = draw(
        st.lists(
            st.builds(
                ExecutorFree,
                executor_id=st.sampled_from([f"e{i}" for i in range(6)]),
                free=st.builds(
                    Demand,
                    cpu=st.sampled_from([0.0, 1.0, 2.0, 4.0, 8.0]),
                    memory=st.integers(0, 16384),
                    gpu=st.integers(0, 4),
                ),
            ),
            min_size=1,
            max_size=5,
            unique_by=lambda e: e.executor_id,
        )
    )
    queues = tuple(
        QueueConfig(
            name=name,
            weight=draw(st.sampled_from([1.0, 2.0, 5.0])),
            quota=draw(quotas),
            cohort=draw(st.none() | st.just("pool")),
            borrowing_limit=draw(quotas),
            preemptible_by_default=preemption and draw(st.booleans()),
        )
        for name in QUEUES
    )
    ids = [e.executor_id for e in executors] or ["gone"]
    running = draw(
        st.lists(
            st.builds(
                RunningJob,
                job_id=st.sampled_from([f"r{i}" for i in range(8)]),
                attempt=st.just(1),
                executor_id=st.sampled_from(ids),
                used=demands,
                queue=st.sampled_from(QUEUES),
                priority=st.integers(-1, 1),
                preemptible=st.booleans() if preemption else st.just(False),
                started_at=st.floats(0, 100),
                timeout=st.none() | st.floats(1, 200),
                ending=st.booleans() if preemption else st.just(False),
            ),
            max_size=8,
        )
    )
    # a gang's rows agree on everything but the executor
    first: dict[str, RunningJob] = {}
    rows = []
    for r in running:
        f = first.setdefault(r.job_id, r)
        rows.append(
            RunningJob(
                r.job_id,
                1,
                r.executor_id,
                r.used,
                f.queue,
                f.priority,
                f.preemptible,
                f.started_at,
                f.timeout,
                f.ending,
            )
        )
    pending = draw(
        st.lists(
            st.builds(
                PendingJob,
                job_id=st.uuids().map(lambda u: u.hex[:8]),
                attempt=st.just(1),
                priority=st.integers(-1, 2),
                submitted_at=st.floats(0, 100),
                demand=demands,
                replicas=st.integers(1, 4),
                not_before=st.none() | st.floats(0, 200),
                queue=st.sampled_from(QUEUES),
                timeout=st.none() | st.floats(1, 300),
            ),
            max_size=30,
            unique_by=lambda j: j.job_id,
        )
    )
    return Snapshot(tuple(pending), tuple(executors), tuple(rows), queues), draw(st.floats(100, 200))


def check_common(snap: Snapshot, now: float, result: Plan) -> None:
    by_id = {j.job_id: j for j in snap.pending}
    free = {e.executor_id: vec(e.free) for e in snap.executors}

    # every job is either placed once, claimed once (preempting) or waiting with a reason
    placed = [a.job_id for a in result.assignments]
    assert len(placed) == len(set(placed))
    assert set(placed) | {w.job_id for w in result.waiting} == set(by_id)
    assert not set(placed) & {w.job_id for w in result.waiting}
    assert all(w.reason and w.position >= 1 for w in result.waiting)
    assert {c.job_id for c in result.claims} == {w.job_id for w in result.waiting if w.kind == "preempting"}

    # gangs are all or nothing: every rank 0..n-1 exactly once, rank 0 on the named executor
    for a in result.assignments + result.claims:
        ranks = sorted(r for p in a.ranks for r in p.ranks)
        assert ranks == list(range(by_id[a.job_id].replicas))
        assert 0 in next(p.ranks for p in a.ranks if p.executor_id == a.executor_id)

    # never starts a job before its backoff ends
    for a in result.assignments:
        nb = by_id[a.job_id].not_before
        assert nb is None or nb <= now

    # never over-commits an executor: what starts now fits in the free room now ...
    used: dict[str, tuple[float, float, float]] = defaultdict(lambda: (0.0, 0.0, 0.0))
    for a in result.assignments:
        for p in a.ranks:
            used[p.executor_id] = add(used[p.executor_id], vec(by_id[a.job_id].demand, len(p.ranks)))
    for eid, u in used.items():
        assert fits(u, free[eid]), (eid, u, free[eid])
    # ... and what is claimed fits once the victims (and jobs already stopping) have gone
    leaving = {v.job_id for v in result.victims}
    for r in snap.running:
        if (r.job_id in leaving or r.ending) and r.executor_id in free:
            free[r.executor_id] = add(free[r.executor_id], vec(r.used))
    for c in result.claims:
        for p in c.ranks:
            used[p.executor_id] = add(used[p.executor_id], vec(by_id[c.job_id].demand, len(p.ranks)))
    for eid, u in used.items():
        assert fits(u, free[eid]), (eid, u, free[eid])


def check_quota(snap: Snapshot, result: Plan) -> None:
    """Never exceeds a quota except by borrowing within the limit and the cohort's unused quota."""
    by_id = {j.job_id: j for j in snap.pending}
    config = {q.name: q for q in snap.queues}
    online = {e.executor_id for e in snap.executors}
    leaving = {v.job_id for v in result.victims}
    usage: dict[str, tuple] = defaultdict(lambda: (0.0, 0.0, 0.0))
    added: dict[str, tuple] = defaultdict(lambda: (0.0, 0.0, 0.0))
    for r in snap.running:
        if r.executor_id in online and not r.ending and r.job_id not in leaving:
            usage[r.queue] = add(usage[r.queue], vec(r.used))
    for a in result.assignments + result.claims:
        j = by_id[a.job_id]
        usage[j.queue] = add(usage[j.queue], vec(j.demand, j.replicas))
        added[j.queue] = add(added[j.queue], vec(j.demand, j.replicas))

    def amounts(q: Quota):
        return [math.inf if v is None else v for v in (q.cpu, q.memory, q.gpu)]

    cohort_use = [0.0, 0.0, 0.0]
    cohort_cap = [0.0, 0.0, 0.0]
    cohort_added = [0.0, 0.0, 0.0]
    for name, q in config.items():
        nominal, borrow = amounts(q.quota), amounts(q.borrowing_limit)
        for r in range(3):
            limit = nominal[r] + borrow[r] if q.cohort else nominal[r]
            if added[name][r] > 0:
                assert usage[name][r] <= limit + EPS, (name, r, usage[name], limit)
            if q.cohort:
                cohort_use[r] += usage[name][r]
                cohort_cap[r] += nominal[r]
                cohort_added[r] += added[name][r]
    for r in range(3):
        if cohort_added[r] > 0:
            assert cohort_use[r] <= cohort_cap[r] + EPS


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots(preemption=False))
def test_properties_without_preemption(case):
    snap, now = case
    result = plan(snap, now)
    check_common(snap, now, result)
    check_quota(snap, result)
    assert result.victims == () and result.claims == ()
    by_id = {j.job_id: j for j in snap.pending}
    free = {e.executor_id: vec(e.free) for e in snap.executors}
    reserved = by_id[result.reservation.job_id] if result.reservation else None

    # a higher priority is never passed over by a lower one that it could have taken: a job that
    # waits for room did not fit even with every lower-priority start undone; one that waits
    # for the reservation waits behind a job of at least its priority
    for w in result.waiting:
        job = by_id[w.job_id]
        room = dict(free)
        for a in result.assignments:
            if by_id[a.job_id].priority >= job.priority:
                for p in a.ranks:
                    room[p.executor_id] = add(
                        room[p.executor_id], vec(by_id[a.job_id].demand, len(p.ranks)), -1
                    )
        fit = replicas_that_fit(job.demand, room.values(), job.replicas) >= job.replicas
        if w.kind in CAPACITY_KINDS:
            assert not fit, w
        elif w.kind in ("backfill", "gang") and fit:
            assert reserved is not None and reserved.priority >= job.priority, w

    # backfill never delays the reserved start: with this pass's starts running, the reserved
    # job still fits at (or before) the time it was promised
    if result.reservation is not None and result.reservation.start is not None:
        releases = [
            (max(r.started_at + r.timeout, now) if r.timeout else math.inf, r.executor_id, vec(r.used))
            for r in snap.running
            if r.executor_id in free
        ]
        room = dict(free)
        for a in result.assignments:
            j = by_id[a.job_id]
            for p in a.ranks:
                amount = vec(j.demand, len(p.ranks))
                room[p.executor_id] = add(room[p.executor_id], amount, -1)
                releases.append((now + j.timeout if j.timeout else math.inf, p.executor_id, amount))
        assert earliest_start(reserved, room, releases, now) <= result.reservation.start + EPS


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots(preemption=True))
def test_properties_with_preemption(case):
    snap, now = case
    result = plan(snap, now)
    check_common(snap, now, result)
    check_quota(snap, result)
    by_id = {j.job_id: j for j in snap.pending}
    config = {q.name: q for q in snap.queues}
    rows: dict[str, list[RunningJob]] = defaultdict(list)
    for r in snap.running:
        if r.executor_id in {e.executor_id for e in snap.executors}:
            rows[r.job_id].append(r)
    victims: dict[str, set[str]] = defaultdict(set)
    assert len({(v.job_id, v.executor_id) for v in result.victims}) == len(result.victims)
    for v in result.victims:
        victims[v.job_id].add(v.executor_id)
    for job_id, executors in victims.items():
        mine = rows[job_id]
        # a victim is preemptible, not already stopping, and stopped on every executor it holds
        assert executors == {r.executor_id for r in mine}
        r = mine[0]
        assert (r.preemptible or config[r.queue].preemptible_by_default) and not r.ending
        preemptor = by_id[next(v.for_job for v in result.victims if v.job_id == job_id)]
        # lower priority, or the same priority in another queue (fair share)
        assert r.priority < preemptor.priority or (
            r.priority == preemptor.priority and r.queue != preemptor.queue
        )
