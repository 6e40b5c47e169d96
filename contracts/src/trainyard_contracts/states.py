"""Job states and the one table of allowed transitions that every service uses."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    SUBMITTED = "submitted"
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    REQUEUED = "requeued"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    REJECTED = "rejected"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def pending(self) -> bool:
        """Waiting for the scheduler to place it."""
        return self in PENDING_STATES

    @property
    def active(self) -> bool:
        """Holding an executor's resources."""
        return self in ACTIVE_STATES


TERMINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT, JobState.REJECTED}
)
PENDING_STATES = frozenset({JobState.QUEUED, JobState.REQUEUED})
ACTIVE_STATES = frozenset({JobState.SCHEDULED, JobState.RUNNING})

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.SUBMITTED: frozenset({JobState.QUEUED, JobState.CANCELLED, JobState.REJECTED}),
    JobState.QUEUED: frozenset({JobState.SCHEDULED, JobState.CANCELLED, JobState.REJECTED}),
    JobState.REQUEUED: frozenset({JobState.SCHEDULED, JobState.CANCELLED}),
    # scheduled -> failed: the attempt could not start (bad source, runtime env build failed)
    JobState.SCHEDULED: frozenset({JobState.RUNNING, JobState.REQUEUED, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.TIMED_OUT,
            JobState.CANCELLED,
            JobState.REQUEUED,
        }
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.TIMED_OUT: frozenset(),
    JobState.REJECTED: frozenset(),
}


class IllegalTransition(ValueError):
    def __init__(self, current: JobState, target: JobState) -> None:
        super().__init__(f"a job cannot go from {current.value} to {target.value}")
        self.current = current
        self.target = target


def can_transition(current: JobState, target: JobState) -> bool:
    return target in TRANSITIONS[current]


def check_transition(current: JobState, target: JobState) -> None:
    if not can_transition(current, target):
        raise IllegalTransition(current, target)
