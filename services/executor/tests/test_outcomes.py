"""How an attempt's end changes the job record: retries, fencing, terminal states."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from trainyard_contracts import JobRequeued, JobSpec, JobState, JobSucceeded, lifecycle
from trainyard_executor.jobenv import job_env
from trainyard_executor.outcomes import AttemptEnd, conclude, event_for, owns

pytestmark = pytest.mark.unit
NOW = datetime(2026, 11, 28, tzinfo=UTC)


def running(retries=0, **spec):
    s = JobSpec(name="x", command=["true"], retries={"limit": retries, "backoff": 1}, **spec)
    r = lifecycle.new_record("jobabcdef", s, NOW, None)
    r = lifecycle.advance(r, JobState.QUEUED, NOW)
    return lifecycle.start(lifecycle.schedule(r, "exec-a", NOW), NOW)


def test_failure_with_retries_left_is_requeued_then_final():
    r = running(retries=1)
    after = conclude(r, AttemptEnd("failed", 3, "exit code 3"), NOW)
    assert after.state == JobState.REQUEUED and after.attempt == 2 and after.retries_used == 1
    event = event_for(r, after, 1.0)
    assert isinstance(event, JobRequeued) and event.attempt == 1 and event.next_attempt == 2
    again = lifecycle.start(lifecycle.schedule(after, "exec-a", NOW), NOW)
    final = conclude(again, AttemptEnd("failed", 3, "exit code 3"), NOW)
    assert final.state == JobState.FAILED and final.exit_code == 3


def test_timeout_is_final_even_with_retries_and_success_keeps_outputs():
    r = running(retries=3)
    assert conclude(r, AttemptEnd("timed_out", None, "t"), NOW).state == JobState.TIMED_OUT
    ok = conclude(r, AttemptEnd("succeeded", 0, "ok", "file:///o"), NOW)
    assert ok.outputs_uri == "file:///o"
    assert isinstance(event_for(r, ok, 2.0), JobSucceeded)


def test_a_success_says_whether_there_is_a_model_to_register():
    """The registry skips reading the record of a job that declared no model (most jobs)."""
    plain = running()
    with_model = running(outputs={"model": "digits"})
    for record, declared in ((plain, False), (with_model, True)):
        ok = conclude(record, AttemptEnd("succeeded", 0, "ok", "file:///o"), NOW)
        event = event_for(record, ok, 1.0)
        assert isinstance(event, JobSucceeded) and event.declares_model is declared


def test_fence_on_executor_and_attempt():
    r = running()
    assert owns(r, "exec-a", 1)
    assert not owns(r, "exec-b", 1)
    assert not owns(r, "exec-a", 2)
    done = conclude(r, AttemptEnd("succeeded", 0, ""), NOW)
    assert not owns(done, "exec-a", 1)


def test_job_env_passes_only_the_allow_list_and_trainyard_vars():
    r = running(env={"OMP_NUM_THREADS": "1"}, source={"repo": "/r", "commit": "a" * 40})
    env = job_env(
        r,
        1,
        {"PATH": "/bin", "TRAINYARD_SUBMISSION_TOKEN": "secret", "HOME": "/h"},
        ("PATH", "HOME"),
        "sqlite:////tmp/m.db",
    )
    assert "TRAINYARD_SUBMISSION_TOKEN" not in env
    assert env["PATH"] == "/bin" and env["OMP_NUM_THREADS"] == "1"
    assert env["TRAINYARD_JOB_ID"] == "jobabcdef" and env["TRAINYARD_ATTEMPT"] == "1"
    assert env["TRAINYARD_GIT_COMMIT"] == "a" * 40
    assert env["MLFLOW_TRACKING_URI"] == "sqlite:////tmp/m.db"
