"""The policy's indexes and caches against the straightforward computation they replace.

A pass keeps, for speed: a cursor per shape over the executors (plus a start-of-pass bound that
skips shapes larger than any executor's room, and per-block bounds that skip blocks of
executors), the room of a job that could delay the reservation (min of free room and shadow) in
arrays of its own, cached per-resource maxima, shared rank placements, a reservation sweep that
skips executors holding no replica without computing it, and a one-look reader for running jobs
that each hold one row. Each is checked here against a plain scan / recomputation on random cases
(hypothesis); the planner-level guarantees are in test_policy_properties.py.
"""

from __future__ import annotations

import heapq
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainyard_contracts.queues import QueueConfig, Quota
from trainyard_scheduler.policy import Demand, ExecutorFree, PendingJob, RunningJob, Snapshot
from trainyard_scheduler.policy.cluster import EPS, Cluster, replicas_in
from trainyard_scheduler.policy.planner import Pass

pytestmark = pytest.mark.unit

shapes = st.tuples(
    st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0]), st.sampled_from([0, 256, 1024, 4096]), st.integers(0, 2)
)
executor = st.builds(
    ExecutorFree,
    executor_id=st.integers(0, 400).map(lambda i: f"e{i}"),
    free=st.builds(
        Demand,
        cpu=st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5, 4.0, 8.0]),
        memory=st.sampled_from([0, 256, 1000, 1024, 4096, 5000]) | st.integers(0, 9000),
        gpu=st.integers(0, 4),
    ),
)
# few executors, or enough for the scan to skip whole blocks of them (BLOCK = 32)
executors = st.lists(executor, min_size=1, max_size=12, unique_by=lambda e: e.executor_id) | st.lists(
    executor, min_size=40, max_size=110, unique_by=lambda e: e.executor_id
)
operations = st.lists(
    st.tuples(
        st.sampled_from(["place", "place", "find", "gang"]),
        shapes,
        st.integers(2, 5),
        st.sampled_from([True, True, False]),
    ),
    max_size=60,
)


def room(cl: Cluster, shadow: dict[int, list[float]], i: int, long: bool) -> tuple[float, float, float]:
    c, m, g = cl.cpu[i], cl.mem[i], cl.gpu[i]
    sh = shadow.get(i) if long else None
    if sh is not None:
        c, m, g = min(c, sh[0]), min(m, sh[1]), min(g, sh[2])
    return c, m, g


def plain_first(
    cl: Cluster, shadow: dict[int, list[float]], dc: float, dm: float, dg: float, long: bool
) -> int:
    """First fit from the start, every executor looked at: what the cursors must agree with."""
    for i in range(len(cl.ids)):
        c, m, g = room(cl, shadow, i, long)
        if c + EPS >= dc and m >= dm and g >= dg:
            return i
    return -1


def plain_find(cl: Cluster, shadow: dict[int, list[float]], dc, dm, dg, n, long):
    i = plain_first(cl, shadow, dc, dm, dg, long)
    if i < 0:
        return None
    if n == 1:
        return [(i, 1)]
    whole = plain_first(cl, shadow, dc * n, dm * n, dg * n, long)
    if whole >= 0:
        return [(whole, n)]
    slots, total = [], 0
    for j in range(i, len(cl.ids)):
        k = replicas_in(*room(cl, shadow, j, long), dc, dm, dg, n - total)
        if k:
            slots.append((j, k))
            total += k
            if total >= n:
                return slots
    return None


def plain_earliest(cpu, mem, gpu, dc, dm, dg, n, releases):
    """The reservation sweep without a heap and without skipping: sorted releases, every
    executor counted with replicas_in."""
    cpu, mem, gpu = list(cpu), list(mem), list(gpu)
    k = [replicas_in(cpu[i], mem[i], gpu[i], dc, dm, dg, n) for i in range(len(cpu))]
    total, at, j = sum(k), -math.inf, 0
    releases = sorted(releases)
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
    whole = next((i for i in range(len(cpu)) if k[i] >= n), -1)
    if whole >= 0:
        return at, [(whole, n)]
    slots, got = [], 0
    for i in range(len(cpu)):
        if k[i]:
            take = min(k[i], n - got)
            slots.append((i, take))
            got += take
            if got >= n:
                break
    return at, slots


releases = st.lists(
    st.tuples(
        st.sampled_from([5.0, 10.0, 10.0, 30.0, math.inf]),
        st.integers(0, 11),
        st.sampled_from([0.5, 1.0, 2.0]),
        st.sampled_from([0, 512, 2048]),
        st.integers(0, 2),
    ),
    max_size=15,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    executors,
    operations,
    st.one_of(st.none(), st.tuples(st.integers(0, 6), shapes, st.integers(1, 4), releases)),
)
def test_placing_agrees_with_a_plain_first_fit_scan(execs, ops, reservation):
    """Cursors, the start-of-pass bound, skipped blocks, the gang bound and the long-job room
    arrays never change where a job goes: every answer equals a scan of every executor from the
    first."""
    cl = Cluster(execs)
    shadow: dict[int, list[float]] = {}
    for step, (op, (dc, dm, dg), n, long) in enumerate(ops):
        if reservation is not None and step == reservation[0]:
            _, (rc, rm, rg), rn, rel = reservation
            rel = [(t, i % len(cl.ids), c, m, g) for t, i, c, m, g in rel]
            expected = plain_earliest(cl.cpu, cl.mem, cl.gpu, rc, rm, rg, rn, rel)
            heap = list(rel)
            heapq.heapify(heap)
            assert cl.earliest(rc, rm, rg, rn, heap) == expected
            shadow = {i: list(v) for i, v in cl.shadow.items()}
        long = long and bool(shadow)  # a job is "long" only once a reservation exists
        if op == "place":
            want = plain_first(cl, shadow, dc, dm, dg, long)
            got = cl.place_one(dc, dm, dg, long)
            assert got == want
            if got >= 0:  # mirror the take on the reference shadow
                if long and got in shadow:
                    shadow[got] = [shadow[got][0] - dc, shadow[got][1] - dm, shadow[got][2] - dg]
        else:
            k = 1 if op == "find" else n
            want = plain_find(cl, shadow, dc, dm, dg, k, long)
            got = cl.find(dc, dm, dg, k, long)
            assert got == want, (op, dc, dm, dg, k, long)
            if got is not None:
                cl.take(got, dc, dm, dg, long)
                for i, r in got:
                    if long and i in shadow:
                        s = shadow[i]
                        shadow[i] = [s[0] - dc * r, s[1] - dm * r, s[2] - dg * r]
        assert {i: list(v) for i, v in cl.shadow.items()} == shadow
        # the cached maxima are the maxima
        assert cl.best() == (max(cl.cpu), max(cl.mem), max(cl.gpu))
        # and the count of replicas that fit now is the plain count
        assert cl.count(dc, dm, dg, n) == min(
            n, sum(replicas_in(cl.cpu[i], cl.mem[i], cl.gpu[i], dc, dm, dg, n) for i in range(len(cl.ids)))
        )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(executors, releases, shapes, st.integers(1, 6))
def test_reservation_sweep_agrees_with_the_plain_sweep(execs, rel, shape, n):
    """Skipping executors that hold no replica (without calling replicas_in) and popping a heap
    instead of sorting give the same start and the same executors."""
    cl = Cluster(execs)
    rel = [(t, i % len(cl.ids), c, m, g) for t, i, c, m, g in rel]
    expected = plain_earliest(cl.cpu, cl.mem, cl.gpu, *shape, n, rel)
    heapq.heapify(rel)
    assert cl.earliest(*shape, n, rel) == expected


def test_placements_are_shared_and_equal_to_fresh_ones():
    cl = Cluster([ExecutorFree("a", Demand(4, 4096)), ExecutorFree("b", Demand(8, 8192))])
    one = cl.placements([(1, 1)])
    assert one is cl.single(1) and one is cl.placements([(1, 1)])
    assert [(p.executor_id, p.ranks) for p in one] == [("b", (0,))]
    gang = cl.placements([(0, 2), (1, 3)])
    assert [(p.executor_id, p.ranks) for p in gang] == [("a", (0, 1)), ("b", (2, 3, 4))]


demands = st.builds(
    Demand,
    cpu=st.sampled_from([0.5, 1.0, 2.0]),
    memory=st.sampled_from([0, 256, 1024]),
    gpu=st.integers(0, 1),
)


@st.composite
def busy_snapshots(draw):
    """Snapshots whose running jobs mostly hold one row each (the fast reader), sometimes a
    gang's several rows or a row on an executor that is gone (the general reader)."""
    execs = draw(
        st.lists(
            st.builds(
                ExecutorFree,
                executor_id=st.integers(0, 9).map(lambda i: f"e{i}"),
                free=st.builds(
                    Demand,
                    cpu=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
                    memory=st.integers(0, 3000),
                    gpu=st.integers(0, 1),
                ),
            ),
            min_size=1,
            max_size=6,
            unique_by=lambda e: e.executor_id,
        )
    )
    ids = [e.executor_id for e in execs] + ["gone"]
    names = ("a", "b", "c")
    queues = tuple(
        QueueConfig(
            name=name,
            weight=draw(st.sampled_from([1.0, 2.0, 5.0])),
            quota=draw(st.just(Quota()) | st.builds(Quota, cpu=st.sampled_from([None, 2.0, 6.0]))),
            cohort=draw(st.none() | st.just("pool")),
            borrowing_limit=Quota(cpu=draw(st.sampled_from([None, 1.0]))),
            preemptible_by_default=draw(st.booleans()),
        )
        for name in names
    )
    job_ids = st.integers(0, 30).map(lambda i: f"r{i}") if draw(st.booleans()) else st.uuids().map(str)
    running = draw(
        st.lists(
            st.builds(
                RunningJob,
                job_id=job_ids,
                attempt=st.just(1),
                executor_id=st.sampled_from(ids),
                used=demands,
                queue=st.sampled_from(names),
                priority=st.integers(-1, 1),
                preemptible=st.booleans(),
                started_at=st.floats(0, 100),
                timeout=st.none() | st.floats(1, 200),
                ending=st.sampled_from([False, False, False, True]),
            ),
            max_size=20,
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
                replicas=st.integers(1, 3),
                not_before=st.none() | st.floats(0, 200),
                queue=st.sampled_from(names),
                timeout=st.none() | st.floats(1, 300),
            ),
            max_size=25,
            unique_by=lambda j: j.job_id,
        )
    )
    return Snapshot(tuple(pending), tuple(execs), tuple(running), queues), draw(st.floats(100, 200))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(busy_snapshots())
def test_one_look_reader_plans_like_the_grouping_reader(case):
    """Usage, releases, capacities and candidates taken in one look at the running rows give the
    very plan that grouping the rows by job gives (same starts, reasons, victims, reservation)."""
    snap, now = case
    fast = Pass(snap, now).run()
    grouped = Pass(snap, now, grouped=True).run()
    assert fast == grouped
