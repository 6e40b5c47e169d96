"""How a split gang's members change the job record: pure functions, no I/O (see gang.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from trainyard_contracts import JobRecord, JobSpec, JobState, lifecycle
from trainyard_contracts._time import utcnow
from trainyard_contracts.records import GangMember, GangPlacement
from trainyard_executor.gang import (
    LOG_SEQ_PER_RANK,
    conclude_member,
    ended_by_a_member,
    leave_member,
    log_seq_base,
    member_of,
    rendezvous_of,
    start_member,
)
from trainyard_executor.outcomes import AttemptEnd, owns

pytestmark = pytest.mark.unit
NOW = utcnow()


def scheduled(retries: int = 0) -> JobRecord:
    spec = JobSpec(name="gang", command=["true"], replicas=3, retries={"limit": retries, "backoff": 0})
    record = lifecycle.advance(lifecycle.new_record("j1", spec, NOW, None), JobState.QUEUED, NOW)
    gang = GangPlacement(
        attempt=1,
        master_addr="10.0.0.1",
        master_port=29555,
        members=[
            GangMember(executor_id="a", ranks=[0, 1]),
            GangMember(executor_id="b", ranks=[2]),
        ],
    )
    return lifecycle.schedule(record, "a", NOW).model_copy(update={"gang": gang})


def test_the_fence_admits_every_member_of_the_current_attempt_and_no_one_else() -> None:
    record = scheduled()
    assert owns(record, "a", 1) and owns(record, "b", 1)
    assert not owns(record, "c", 1) and not owns(record, "b", 2)
    # a placement left from an older attempt fences nothing in
    stale = record.model_copy(update={"attempt": 2})
    assert member_of(stale, "b", 2) is None and not owns(stale, "b", 2)
    # a record without a gang (every record before split gangs): rank 0's executor alone
    plain = record.model_copy(update={"gang": None})
    assert owns(plain, "a", 1) and not owns(plain, "b", 1)


def test_the_first_member_to_start_makes_the_job_running_the_next_only_records_its_start() -> None:
    first = start_member(scheduled(), "b", NOW)
    assert first is not None and first.state == JobState.RUNNING
    assert first.gang is not None and first.gang.member("b").started_at == NOW  # type: ignore[union-attr]
    assert first.gang.member("a").started_at is None  # type: ignore[union-attr]
    later = NOW + timedelta(seconds=1)
    second = start_member(first, "a", later)
    assert second is not None and second.state == JobState.RUNNING
    assert second.gang.member("a").started_at == later  # type: ignore[union-attr]
    assert start_member(second, "a", later) is None  # a redelivered start launches nothing


def test_members_see_their_own_ranks_and_the_scheduler_s_rendezvous() -> None:
    record = scheduled()
    rdv = rendezvous_of(record, "b", 1)
    assert rdv is not None
    assert (rdv.master_addr, rdv.master_port, rdv.world_size, rdv.ranks) == ("10.0.0.1", 29555, 3, [2])
    assert rendezvous_of(record, "c", 1) is None
    # members ship to one log subject: their chunk ids must not meet
    assert log_seq_base(record, "a", 1) == 0 and log_seq_base(record, "b", 1) == 2 * LOG_SEQ_PER_RANK


def running(retries: int = 0) -> JobRecord:
    record = start_member(scheduled(retries), "a", NOW)
    assert record is not None
    record = start_member(record, "b", NOW)
    assert record is not None
    return record


def test_the_job_succeeds_when_the_last_member_succeeds_with_rank_0_s_outputs() -> None:
    one = conclude_member(running(), "b", AttemptEnd("succeeded", 0, "exit code 0", "file:///b"), NOW)
    assert one.state == JobState.RUNNING  # a waits
    assert one.gang.member("b").state == JobState.SUCCEEDED  # type: ignore[union-attr]
    both = conclude_member(one, "a", AttemptEnd("succeeded", 0, "exit code 0", "file:///a"), NOW)
    assert both.state == JobState.SUCCEEDED and both.outputs_uri == "file:///a" and both.exit_code == 0


def test_any_member_s_failure_fails_the_attempt_and_a_retry_requeues_it() -> None:
    failed = conclude_member(running(), "b", AttemptEnd("failed", 3, "rank 2: exit code 3"), NOW)
    assert failed.state == JobState.FAILED and failed.exit_code == 3
    assert failed.reason == "b (ranks [2]): rank 2: exit code 3"
    retried = conclude_member(running(retries=1), "b", AttemptEnd("failed", 3, "exit code 3"), NOW)
    assert retried.state == JobState.REQUEUED and retried.attempt == 2 and retried.retries_used == 1
    # the old placement stays as history, but fences no one into attempt 2
    assert retried.gang is not None and retried.gang.attempt == 1 and retried.split_gang() is None
    assert not owns(retried, "a", 1) and not owns(retried, "a", 2)


def test_a_member_stops_when_another_member_ended_the_attempt_not_on_a_scheduler_requeue() -> None:
    record = running(retries=1)
    assert not ended_by_a_member(record, 1, "a")  # still running: nothing to stop
    failed = conclude_member(record, "b", AttemptEnd("failed", 3, "x"), NOW)
    assert ended_by_a_member(failed, 1, "a")  # retried: b's ranks failed
    final = conclude_member(running(), "b", AttemptEnd("timed_out", None, "t"), NOW)
    assert ended_by_a_member(final, 1, "a")  # terminal
    preempted = lifecycle.requeue(record, NOW, reason="preempted", counts_as_retry=False)
    assert not ended_by_a_member(preempted, 1, "a")  # the scheduler's cancel brings the grace
    gave_up = lifecycle.requeue(
        leave_member(record, "b", NOW, "executor shut down"),
        NOW,
        reason="executor_lost",
        counts_as_retry=False,
    )
    assert ended_by_a_member(gave_up, 1, "a")  # b said it gave its ranks up
    replaced = lifecycle.schedule(preempted, "c", NOW).model_copy(update={"gang": None})
    assert ended_by_a_member(replaced, 1, "a")  # attempt 2 is placed: attempt 1 is worth nothing
