"""Where each job is, from its events: forward only, so a redelivered or older event never moves
a job back, and the start-up read of the records and the events may overlap in any order."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainyard_contracts import (
    JobCancelled,
    JobQueued,
    JobRequeued,
    JobRunning,
    JobScheduled,
    JobSpec,
    JobState,
    JobSubmitted,
    JobSucceeded,
    lifecycle,
)
from trainyard_contracts._time import utcnow
from trainyard_telemetry.jobstates import JobStates

pytestmark = pytest.mark.unit

NOW = utcnow()
SPEC = JobSpec(name="x", command=["true"], queue="gpu")


def lifecycle_events(job_id: str = "job0000001") -> list:
    """Submitted, queued, scheduled, running; requeued (lost executor); scheduled, running, succeeded."""
    return [
        JobSubmitted(job_id=job_id, spec=SPEC, time=NOW),
        JobQueued(job_id=job_id, queue="gpu"),
        JobScheduled(job_id=job_id, executor_id="e1", resources={"cpu": 1, "memory": 1, "gpu": 0}),
        JobRunning(job_id=job_id, executor_id="e1"),
        JobRequeued(job_id=job_id, reason="executor_lost", next_attempt=2),
        JobScheduled(job_id=job_id, attempt=2, executor_id="e2", resources={"cpu": 1, "memory": 1, "gpu": 0}),
        JobRunning(job_id=job_id, attempt=2, executor_id="e2"),
        JobSucceeded(job_id=job_id, attempt=2, duration_seconds=1.0),
    ]


def test_a_job_follows_its_events_through_a_requeue_to_the_end():
    states = JobStates()
    seen = []
    for event in lifecycle_events():
        facts = states.apply(event)
        seen.append((facts.attempt, facts.state))
    assert seen == [
        (1, JobState.SUBMITTED),
        (1, JobState.QUEUED),
        (1, JobState.SCHEDULED),
        (1, JobState.RUNNING),
        (2, JobState.REQUEUED),
        (2, JobState.SCHEDULED),
        (2, JobState.RUNNING),
        (2, JobState.SUCCEEDED),
    ]
    facts = states.get("job0000001")
    assert facts.queue == "gpu" and facts.submitted_at == NOW


def test_pending_jobs_count_in_their_queue_and_terminal_ones_do_not():
    states = JobStates()
    for event in lifecycle_events("a")[:2] + lifecycle_events("b")[:5] + lifecycle_events("c"):
        states.apply(event)
    states.apply(JobSubmitted(job_id="d", spec=SPEC))
    states.apply(JobCancelled(job_id="d", reason="by request"))
    by_state, depth = states.tally()
    assert by_state == {"queued": 1, "requeued": 1, "succeeded": 1, "cancelled": 1}
    assert depth == {"gpu": 2, "default": 0}  # every queue has a series, 0 when none waits


@given(st.permutations(range(8)), st.integers(min_value=0, max_value=8))
def test_any_order_of_redelivery_and_the_start_up_read_ends_where_the_job_is(order, seeded_after):
    """The events of a job delivered again in any order (as after a crash), with the records read at
    start-up at any point of its life: the job ends in the last state, never further back."""
    events = lifecycle_events()
    record = lifecycle.new_record("job0000001", SPEC, NOW - timedelta(seconds=1), None)
    if seeded_after:  # the record as it stood after that many of the events
        state = JobState(events[seeded_after - 1].type)
        record = record.model_copy(update={"state": state, "attempt": 2 if seeded_after >= 5 else 1})
    states = JobStates()
    states.seed([record])
    for i in order:
        states.apply(events[i])
    facts = states.get("job0000001")
    assert (facts.attempt, facts.state) == (2, JobState.SUCCEEDED)
    assert facts.queue == "gpu"


@given(st.lists(st.integers(min_value=0, max_value=7), min_size=1, max_size=12))
def test_a_job_is_where_its_furthest_event_put_it_whatever_came_after(picks):
    """Any events of the job, repeated and out of order: the job is at the furthest of them."""
    events = lifecycle_events()
    states = JobStates()
    for i in picks:
        states.apply(events[i])
    furthest = max(picks)
    expected_attempt = 2 if furthest >= 4 else 1
    facts = states.get("job0000001")
    assert (facts.attempt, facts.state.value) == (expected_attempt, events[furthest].type)
