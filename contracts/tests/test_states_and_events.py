"""The transition table, the lifecycle decisions, subjects and the event union."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from trainyard_contracts import (
    TERMINAL_STATES,
    TRANSITIONS,
    IllegalTransition,
    JobSpec,
    JobState,
    JobSucceeded,
    Subjects,
    lifecycle,
    msg_id,
    new_job_id,
    parse_job_event,
)
from trainyard_contracts.ids import is_job_id

pytestmark = pytest.mark.unit
NOW = datetime(2026, 11, 28, tzinfo=UTC)


def test_terminal_states_have_no_way_out_and_every_state_is_in_the_table():
    assert set(TRANSITIONS) == set(JobState)
    for state in TERMINAL_STATES:
        assert TRANSITIONS[state] == frozenset()


def test_lifecycle_happy_path_and_illegal_moves():
    spec = JobSpec(name="x", command=["true"])
    r = lifecycle.new_record("j1abcdef", spec, NOW, "api")
    r = lifecycle.advance(r, JobState.QUEUED, NOW)
    r = lifecycle.schedule(r, "exec-1", NOW)
    r = lifecycle.start(r, NOW)
    done = lifecycle.finish(r, JobState.SUCCEEDED, NOW, exit_code=0, reason=None)
    assert done.attempts[0].executor_id == "exec-1" and done.attempts[0].state == JobState.SUCCEEDED
    with pytest.raises(IllegalTransition):
        lifecycle.advance(done, JobState.RUNNING, NOW)


def test_requeue_bumps_the_attempt_and_backs_off_only_for_retries():
    spec = JobSpec(name="x", command=["true"], retries={"limit": 2, "backoff": 10})
    r = lifecycle.start(
        lifecycle.schedule(
            lifecycle.advance(lifecycle.new_record("j1abcdef", spec, NOW, None), JobState.QUEUED, NOW),
            "e",
            NOW,
        ),
        NOW,
    )
    retried = lifecycle.requeue(r, NOW, reason="retry", counts_as_retry=True)
    assert retried.attempt == 2 and retried.retries_used == 1
    assert retried.not_before == NOW + timedelta(seconds=10)
    lost = lifecycle.requeue(r, NOW, reason="executor_lost", counts_as_retry=False)
    assert lost.attempt == 2 and lost.retries_used == 0 and lost.not_before is None
    assert lifecycle.retry_backoff(spec, 2) == 40


def test_subjects_and_message_ids():
    s = Subjects("acme")
    assert s.job("j1", "running") == "acme.job.j1.running"
    assert s.job_events("j1") == "acme.job.j1.>"
    assert s.streams.jobs == "ACME_JOBS" and s.buckets.jobs == "acme_jobs"
    assert msg_id("j1", 2, "scheduled") == "j1:2:scheduled"
    with pytest.raises(ValueError, match="prefix"):
        Subjects("Bad.Prefix")


def test_event_union_round_trip_and_msg_id():
    event = JobSucceeded(job_id="j1abcdef", attempt=3, outputs_uri="file:///tmp/o")
    parsed = parse_job_event(event.model_dump_json())
    assert isinstance(parsed, JobSucceeded) and parsed == event
    assert parsed.msg_id() == "j1abcdef:3:succeeded"
    assert parsed.subject(Subjects()) == "trainyard.job.j1abcdef.succeeded"


def test_job_ids_sort_by_time_and_are_subject_safe():
    a, b = new_job_id(1_000_000.0), new_job_id(2_000_000.0)
    assert a < b and is_job_id(a) and "." not in a and len(a) == 16
