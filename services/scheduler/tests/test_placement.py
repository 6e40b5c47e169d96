"""The pure placement policy: examples and properties (hypothesis)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainyard_scheduler.placement import (
    Demand,
    ExecutorFree,
    PendingJob,
    Snapshot,
    plan,
    queue_order,
)

pytestmark = pytest.mark.unit


def job(jid, cpu=1.0, mem=100, gpu=0, prio=0, at=0.0, replicas=1, not_before=None):
    return PendingJob(jid, 1, prio, at, Demand(cpu, mem, gpu), replicas, not_before)


def test_priority_then_submit_time():
    snap = Snapshot(
        pending=(job("late-high", prio=5, at=9), job("early-low", at=1), job("mid-low", at=2)),
        executors=(ExecutorFree("e1", Demand(2, 1000, 0)),),
    )
    placed = [a.job_id for a in plan(snap, now=10).assignments]
    assert placed == ["late-high", "early-low"]


def test_best_fit_keeps_the_big_hole_for_the_big_job():
    snap = Snapshot(
        pending=(job("small", cpu=1, at=1), job("big", cpu=8, at=2)),
        executors=(
            ExecutorFree("big-box", Demand(8, 10_000, 0)),
            ExecutorFree("small-box", Demand(2, 10_000, 0)),
        ),
    )
    decisions = {a.job_id: a.executor_id for a in plan(snap, now=0).assignments}
    assert decisions == {"small": "small-box", "big": "big-box"}


def test_replicas_need_room_for_all_and_backoff_waits():
    snap = Snapshot(
        pending=(job("gang", cpu=2, replicas=3), job("retry", not_before=50.0)),
        executors=(ExecutorFree("e1", Demand(5, 10_000, 0)),),
    )
    result = plan(snap, now=10)
    assert result.assignments == ()
    reasons = {w.job_id: w.reason for w in result.waiting}
    assert "cpu 6 > 5 free" in reasons["gang"]
    assert reasons["retry"] == "retry backoff"


def test_no_executor_online_is_said_plainly():
    result = plan(Snapshot(pending=(job("a"),), executors=()), now=0)
    assert result.waiting[0].reason == "no executor is online"


def test_policy_imports_no_broker():
    code = (
        "import sys, trainyard_scheduler.placement;"
        "bad=[m for m in sys.modules if m.split('.')[0] in ('nats','faststream')];"
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


demands = st.builds(
    Demand,
    cpu=st.sampled_from([0.5, 1.0, 2.0, 4.0]),
    memory=st.integers(64, 8192),
    gpu=st.integers(0, 2),
)
jobs = st.lists(
    st.builds(
        PendingJob,
        job_id=st.uuids().map(lambda u: u.hex[:12]),
        attempt=st.just(1),
        priority=st.integers(-2, 2),
        submitted_at=st.floats(0, 100),
        demand=demands,
        replicas=st.integers(1, 3),
        not_before=st.none() | st.floats(0, 200),
    ),
    max_size=40,
    unique_by=lambda j: j.job_id,
)
executors = st.lists(
    st.builds(
        ExecutorFree,
        executor_id=st.uuids().map(lambda u: "e" + u.hex[:6]),
        free=st.builds(Demand, cpu=st.floats(0, 16), memory=st.integers(0, 32768), gpu=st.integers(0, 4)),
    ),
    max_size=6,
    unique_by=lambda e: e.executor_id,
)


@settings(max_examples=300, deadline=None)
@given(jobs, executors, st.floats(0, 200))
def test_properties(pending, execs, now):
    snap = Snapshot(tuple(pending), tuple(execs))
    result = plan(snap, now)
    by_id = {j.job_id: j for j in pending}
    free = {e.executor_id: e.free for e in execs}

    # every job is either placed once or waiting with a reason
    placed = [a.job_id for a in result.assignments]
    assert len(placed) == len(set(placed))
    assert set(placed) | {w.job_id for w in result.waiting} == set(by_id)

    # never over-commits an executor, on any resource
    used: dict[str, Demand] = {}
    for a in result.assignments:
        u = used.get(a.executor_id, Demand(0, 0, 0))
        t = by_id[a.job_id].total
        used[a.executor_id] = Demand(u.cpu + t.cpu, u.memory + t.memory, u.gpu + t.gpu)
    for eid, u in used.items():
        assert u.fits_in(free[eid])

    # never starts a job before its backoff ends
    for a in result.assignments:
        nb = by_id[a.job_id].not_before
        assert nb is None or nb <= now

    # a waiting job (not in backoff) did not fit anywhere when its turn came: no lower-priority
    # or later job took room it could have had
    order = sorted(pending, key=queue_order)
    assigned = {a.job_id: a.executor_id for a in result.assignments}
    room = dict(free)
    for j in order:
        if j.job_id in assigned:
            room[assigned[j.job_id]] = room[assigned[j.job_id]].minus(j.total)
        elif j.not_before is None or j.not_before <= now:
            assert not any(j.total.fits_in(r) for r in room.values())
