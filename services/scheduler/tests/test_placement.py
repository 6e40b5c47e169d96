"""The pure placement policy, one rule at a time (properties are in test_policy_properties.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trainyard_contracts.queues import QueueConfig, Quota
from trainyard_scheduler.policy import (
    Demand,
    ExecutorFree,
    PendingJob,
    RunningJob,
    Snapshot,
    plan,
)

pytestmark = pytest.mark.unit


def job(
    jid, cpu=1.0, mem=100, gpu=0, prio=0, at=0.0, replicas=1, not_before=None, queue="default", timeout=None
):
    return PendingJob(jid, 1, prio, at, Demand(cpu, mem, gpu), replicas, not_before, queue, timeout)


def box(eid, cpu, mem=10_000, gpu=0):
    return ExecutorFree(eid, Demand(cpu, mem, gpu))


def running(
    jid, eid, cpu, mem=100, prio=0, queue="default", preemptible=False, at=0.0, timeout=None, ending=False
):
    return RunningJob(jid, 1, eid, Demand(cpu, mem, 0), queue, prio, preemptible, at, timeout, ending)


def why(result):
    return {w.job_id: w for w in result.waiting}


def placed(result):
    return {a.job_id: a.executor_id for a in result.assignments}


# -- order ---------------------------------------------------------------------------------------


def test_priority_then_submit_time():
    snap = Snapshot(
        pending=(job("late-high", prio=5, at=9), job("early-low", at=1), job("mid-low", at=2)),
        executors=(box("e1", 2),),
    )
    assert [a.job_id for a in plan(snap, now=10).assignments] == ["late-high", "early-low"]


def test_best_fit_keeps_the_big_hole_for_the_big_job():
    snap = Snapshot(
        pending=(job("small", cpu=1, at=1), job("big", cpu=8, at=2)),
        executors=(box("big-box", 8), box("small-box", 2)),
    )
    assert placed(plan(snap, now=0)) == {"small": "small-box", "big": "big-box"}


def test_cpu_jobs_keep_off_gpu_executors_while_others_have_room():
    snap = Snapshot(pending=(job("cpu-only", cpu=1),), executors=(box("gpu", 8, gpu=4), box("plain", 8)))
    assert placed(plan(snap, now=0)) == {"cpu-only": "plain"}


def test_weighted_fair_share_across_queues():
    """Same priority: the queue with the lowest share per weight goes next, so a queue of weight 3
    gets three starts for every one of a queue of weight 1 when room is short."""
    queues = (QueueConfig(name="a", weight=1), QueueConfig(name="b", weight=3))
    pending = tuple(job(f"a{i}", queue="a", at=i) for i in range(8)) + tuple(
        job(f"b{i}", queue="b", at=100 + i) for i in range(8)
    )
    result = plan(Snapshot(pending, (box("e", 8),), queues=queues), now=0)
    started = [a.job_id[0] for a in result.assignments]
    assert started.count("a") == 2 and started.count("b") == 6


def test_priority_class_comes_before_fair_share():
    queues = (QueueConfig(name="a", weight=1), QueueConfig(name="b", weight=100))
    pending = (job("b-low", queue="b", prio=0), job("a-high", queue="a", prio=1, at=5))
    result = plan(Snapshot(pending, (box("e", 1),), queues=queues), now=10)
    assert placed(result) == {"a-high": "e"}


def test_running_usage_counts_towards_the_share():
    queues = (QueueConfig(name="a"), QueueConfig(name="b"))
    run = (running("r1", "e", 3, queue="a"),)
    pending = (job("a1", queue="a", at=1), job("b1", queue="b", at=2))
    result = plan(Snapshot(pending, (box("e", 1),), run, queues), now=10)
    assert placed(result) == {"b1": "e"}  # a already holds 3 cores, b none
    assert why(result)["a1"].why.position == 1


# -- gangs ---------------------------------------------------------------------------------------


def test_gang_on_one_executor_when_one_holds_it():
    snap = Snapshot(pending=(job("g", cpu=2, replicas=3),), executors=(box("small", 4), box("big", 8)))
    (a,) = plan(snap, now=0).assignments
    assert a.executor_id == "big" and [(p.executor_id, p.ranks) for p in a.ranks] == [("big", (0, 1, 2))]
    assert a.world_size == 3


def test_gang_spreads_across_executors_and_names_the_ranks():
    snap = Snapshot(pending=(job("g", cpu=2, replicas=4),), executors=(box("e1", 4), box("e2", 5)))
    (a,) = plan(snap, now=0).assignments
    ranks = {p.executor_id: p.ranks for p in a.ranks}
    assert sorted(r for rs in ranks.values() for r in rs) == [0, 1, 2, 3]
    assert ranks[a.executor_id][0] == 0  # rank 0's executor is the master
    assert set(ranks) == {"e1", "e2"}


def test_gang_is_all_or_nothing():
    snap = Snapshot(
        pending=(job("head", cpu=8, prio=1), job("g", cpu=2, replicas=3), job("retry", not_before=50.0)),
        executors=(box("e1", 5),),
        running=(running("r", "e1", 3, timeout=100),),
    )
    result = plan(snap, now=10)
    assert result.assignments == ()
    gang = why(result)["g"]
    assert gang.kind == "gang" and "2 of 3 replicas" in gang.reason and "cpu 6 > 5 free" in gang.reason
    assert why(result)["retry"].reason == "retry backoff"
    assert why(result)["retry"].estimated_start == 50.0


def test_no_executor_online_is_said_plainly():
    result = plan(Snapshot(pending=(job("a"),), executors=()), now=0)
    assert result.waiting[0].reason == "no executor is online"
    assert result.waiting[0].why.kind == "no_executor"


def test_too_large_for_the_cluster():
    snap = Snapshot(
        pending=(job("huge", cpu=64),), executors=(box("e", 8),), running=(running("r", "e", 8, timeout=10),)
    )
    result = plan(snap, now=0)
    assert why(result)["huge"].kind == "too_large"
    assert result.reservation is None


# -- quotas --------------------------------------------------------------------------------------


def test_quota_stops_a_queue_without_cohort():
    queues = (QueueConfig(name="a", quota=Quota(cpu=2)),)
    pending = tuple(job(f"a{i}", queue="a", at=i) for i in range(3))
    result = plan(Snapshot(pending, (box("e", 8),), queues=queues), now=10)
    assert sorted(placed(result)) == ["a0", "a1"]
    w = why(result)["a2"]
    assert w.kind == "quota" and "cpu quota 2 reached" in w.reason and w.position == 1


def test_borrowing_within_the_cohort_up_to_the_limit():
    queues = (
        QueueConfig(name="a", quota=Quota(cpu=2), cohort="c", borrowing_limit=Quota(cpu=1)),
        QueueConfig(name="b", quota=Quota(cpu=4), cohort="c"),
    )
    pending = tuple(job(f"a{i}", queue="a", at=i) for i in range(5))
    result = plan(Snapshot(pending, (box("e", 16),), queues=queues), now=10)
    assert sorted(placed(result)) == ["a0", "a1", "a2"]  # 2 nominal + 1 borrowed
    assert "borrowing 1" in why(result)["a3"].reason


def test_borrowing_only_what_the_cohort_leaves_unused():
    queues = (
        QueueConfig(name="a", quota=Quota(cpu=2), cohort="c", borrowing_limit=Quota(cpu=10)),
        QueueConfig(name="b", quota=Quota(cpu=3), cohort="c"),
    )
    run = (running("b-run", "e", 2, queue="b"),)
    pending = tuple(job(f"a{i}", queue="a", at=i) for i in range(5))
    result = plan(Snapshot(pending, (box("e", 16),), run, queues), now=10)
    assert len(result.assignments) == 3  # cohort nominal 5, b uses 2
    assert why(result)["a3"].reason.startswith("queue a: its cohort has no unused cpu")


# -- backfill with a reservation ------------------------------------------------------------------


def _backfill_snapshot(*pending):
    # e1 has 2 of 8 cores free until its running job ends at t=100; e2 has 2 free for good
    return Snapshot(
        pending=(job("head", cpu=8, at=0, timeout=1000), *pending),
        executors=(box("e1", 2), box("e2", 2)),
        running=(running("r1", "e1", 6, at=0, timeout=100), running("r2", "e2", 6)),
    )


def test_head_job_reserves_the_earliest_capacity():
    result = plan(_backfill_snapshot(), now=10)
    head = why(result)["head"]
    assert head.kind == "reserved" and head.estimated_start == 100
    assert result.reservation is not None and result.reservation.executors == ("e1",)


def test_short_job_backfills_when_it_ends_before_the_reserved_start():
    result = plan(_backfill_snapshot(job("short", cpu=2, at=1, timeout=50)), now=10)
    assert "short" in placed(result)


def test_long_job_may_not_take_the_reserved_room_but_may_take_other_room():
    result = plan(
        _backfill_snapshot(job("long1", cpu=2, at=1, timeout=500), job("long2", cpu=2, at=2, timeout=500)),
        now=10,
    )
    assert placed(result) == {"long1": "e2"}
    w = why(result)["long2"]
    assert w.kind == "backfill" and "head" in w.reason


def test_reservation_unknown_when_blockers_have_no_timeout():
    snap = Snapshot(pending=(job("head", cpu=8),), executors=(box("e", 2),), running=(running("r", "e", 6),))
    result = plan(snap, now=0)
    assert why(result)["head"].kind == "reserved" and why(result)["head"].estimated_start is None


# -- preemption ----------------------------------------------------------------------------------


def test_higher_priority_preempts_the_fewest_youngest_lower_priority_jobs():
    run = (
        running("old", "e1", 2, preemptible=True, at=1),
        running("young", "e1", 2, preemptible=True, at=5),
        running("small1", "e2", 1, preemptible=True, at=8),
        running("small2", "e2", 1, preemptible=True, at=9),
    )
    snap = Snapshot(
        pending=(job("urgent", cpu=2, prio=5),), executors=(box("e1", 0), box("e2", 0)), running=run
    )
    result = plan(snap, now=10)
    assert [(v.job_id, v.executor_id, v.for_job) for v in result.victims] == [("young", "e1", "urgent")]
    assert "priority 5 > 0" in result.victims[0].reason
    assert why(result)["urgent"].kind == "preempting" and result.assignments == ()
    assert result.claims[0].executor_id == "e1"


def test_non_preemptible_and_higher_priority_jobs_are_never_victims():
    run = (running("pinned", "e", 4), running("vip", "e", 4, prio=9, preemptible=True))
    snap = Snapshot(pending=(job("urgent", cpu=2, prio=5),), executors=(box("e", 0),), running=run)
    result = plan(snap, now=10)
    assert result.victims == () and why(result)["urgent"].kind != "preempting"


def test_never_preempts_for_a_job_that_would_still_not_fit():
    run = (running("low", "e", 4, preemptible=True),)
    snap = Snapshot(pending=(job("urgent", cpu=16, prio=5),), executors=(box("e", 4),), running=run)
    assert plan(snap, now=10).victims == ()


def test_queue_default_makes_jobs_preemptible():
    queues = (QueueConfig(name="spot", preemptible_by_default=True), QueueConfig(name="prod"))
    run = (running("cheap", "e", 4, queue="spot"),)
    snap = Snapshot((job("urgent", cpu=4, prio=1, queue="prod"),), (box("e", 0),), run, queues)
    assert [v.job_id for v in plan(snap, now=1).victims] == ["cheap"]


def test_queue_under_its_fair_share_preempts_a_queue_over_it():
    queues = (QueueConfig(name="hog"), QueueConfig(name="starved"))
    run = tuple(running(f"h{i}", "e", 2, queue="hog", preemptible=True, at=i) for i in range(4))
    snap = Snapshot((job("s1", cpu=2, queue="starved"),), (box("e", 0),), run, queues)
    result = plan(snap, now=10)
    assert [v.job_id for v in result.victims] == ["h3"]  # the youngest
    assert "over its fair share" in result.victims[0].reason


def test_fair_share_preemption_stops_at_the_even_split():
    """Each queue holds half: the waiting one is not under its share, so nothing is preempted."""
    queues = (QueueConfig(name="a"), QueueConfig(name="b"))
    run = (
        running("a1", "e", 4, queue="a", preemptible=True),
        running("b1", "e", 4, queue="b", preemptible=True),
    )
    snap = Snapshot((job("b2", cpu=4, queue="b"),), (box("e", 0),), run, queues)
    assert plan(snap, now=10).victims == ()


def test_gang_preemption_takes_whole_victims_and_only_as_many_as_needed():
    run = (
        running("v-gang", "e1", 2, preemptible=True, at=1),
        RunningJob("v-gang", 1, "e2", Demand(2, 100, 0), preemptible=True, started_at=1),
        running("v-young", "e2", 2, preemptible=True, at=9),
    )
    snap = Snapshot((job("g", cpu=2, replicas=2, prio=3),), (box("e1", 0), box("e2", 0)), run)
    result = plan(snap, now=10)
    # v-gang alone frees a replica's room on both executors: one victim instead of two
    assert sorted((v.job_id, v.executor_id) for v in result.victims) == [("v-gang", "e1"), ("v-gang", "e2")]
    assert sum(len(p.ranks) for p in result.claims[0].ranks) == 2


def test_room_being_freed_is_claimed_without_new_victims():
    run = (
        running("stopping", "e", 4, ending=True, preemptible=True),
        running("other", "e", 4, preemptible=True),
    )
    snap = Snapshot((job("urgent", cpu=4, prio=5),), (box("e", 0),), run)
    result = plan(snap, now=10)
    assert result.victims == () and why(result)["urgent"].kind == "preempting"


# -- structure -----------------------------------------------------------------------------------


def test_every_waiting_job_has_a_structured_reason():
    snap = Snapshot(tuple(job(f"j{i}", cpu=4, at=i) for i in range(4)), (box("e", 4),))
    result = plan(snap, now=0)
    reasons = [w.why for w in result.waiting]
    assert [r.position for r in reasons] == [1, 2, 3]
    assert reasons[0].kind == "reserved" and all(r.message for r in reasons)


def test_policy_imports_no_broker():
    code = (
        "import trainyard_scheduler.policy, sys; "
        "assert not any(m.startswith(('faststream','nats')) for m in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
