"""Which record facts free an attempt's room (room.py): pure, no I/O."""

from __future__ import annotations

from datetime import timedelta

import pytest

from trainyard_contracts import JobSpec, JobState, lifecycle
from trainyard_contracts._time import utcnow
from trainyard_scheduler.room import attempt_ended, frees_room, stopping_attempts

pytestmark = pytest.mark.unit
NOW = utcnow()


def running_on(executor_id: str = "e1"):
    r = lifecycle.new_record("job0000001", JobSpec(name="x", command=["true"]), NOW, None)
    r = lifecycle.schedule(lifecycle.advance(r, JobState.QUEUED, NOW), executor_id, NOW)
    return lifecycle.start(r, NOW)


def test_an_end_its_executor_wrote_frees_the_room():
    r = running_on()
    assert not attempt_ended(r, 1, "e1")
    done = lifecycle.finish(r, JobState.SUCCEEDED, NOW, exit_code=0, reason=None)
    assert attempt_ended(done, 1, "e1")
    retried = lifecycle.requeue(r, NOW, reason="failed", counts_as_retry=True)  # the executor's write
    assert attempt_ended(retried, 1, "e1") and stopping_attempts(retried, NOW, 60) == []


def test_an_attempt_the_scheduler_stopped_holds_its_room_until_its_executor_says_it_ended():
    preempted = lifecycle.requeue(
        r := running_on(), NOW, reason="preempted", counts_as_retry=False, stopping=True
    )
    assert not attempt_ended(preempted, 1, "e1")
    assert stopping_attempts(preempted, NOW, 60) == [(1, "e1")]
    assert stopping_attempts(preempted, NOW + timedelta(seconds=61), 60) == []  # held for a bound
    ended = lifecycle.stopped(preempted, 1, "e1")
    assert ended is not None and attempt_ended(ended, 1, "e1") and frees_room(preempted, ended)
    assert lifecycle.stopped(preempted, 1, "e2") is None  # only its own executor says so
    assert not frees_room(r, preempted)
