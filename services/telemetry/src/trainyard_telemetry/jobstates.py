"""Where every job is, kept from the job events themselves (no watch on the jobs bucket).

Telemetry needs three facts per job: its state (for the jobs-by-state and queue-depth gauges),
its queue and its submission time (for the wait histogram). Following the jobs bucket cost four
record deliveries and parses per job on top of the five events telemetry consumes anyway, so
the facts come from the events, and from one ordered read of the bucket at start-up.

Events and the start-up read can overlap (a consumer resumes from its last ack, so events older
than the read are delivered again): a fact is taken only when it moves the job forward, by
(attempt, step of the attempt). Pure: no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from trainyard_contracts import JobEvent, JobRecord, JobSpec, JobState
from trainyard_contracts.spec import Resources

DEFAULT_QUEUE = "default"
UNKNOWN_QUEUE = "unknown"  # a job first seen through an event that does not name its queue

# how far an attempt has come; a requeue starts the next attempt at "pending"
STEP: dict[JobState, int] = {
    JobState.SUBMITTED: 0,
    JobState.QUEUED: 1,
    JobState.REQUEUED: 1,
    JobState.SCHEDULED: 2,
    JobState.RUNNING: 3,
    JobState.SUCCEEDED: 9,
    JobState.FAILED: 9,
    JobState.TIMED_OUT: 9,
    JobState.CANCELLED: 9,
    JobState.REJECTED: 9,
}
STATE_OF_EVENT: dict[str, JobState] = {
    "submitted": JobState.SUBMITTED,
    "queued": JobState.QUEUED,
    "scheduled": JobState.SCHEDULED,
    "running": JobState.RUNNING,
    "succeeded": JobState.SUCCEEDED,
    "failed": JobState.FAILED,
    "timed_out": JobState.TIMED_OUT,
    "cancelled": JobState.CANCELLED,
    "requeued": JobState.REQUEUED,
}


@dataclass(slots=True)
class JobFacts:
    attempt: int
    state: JobState
    queue: str
    submitted_at: datetime | None
    cpu: float = 0.0
    """Cores the job asked for, every replica together (0: not known, first seen after submitted)."""
    memory_bytes: int = 0
    gang: bool = False
    """Several replicas (known from the spec): the executor tags each output line with its rank."""

    def behind(self, attempt: int, state: JobState) -> bool:
        """(attempt, state) is further on than what is known."""
        if self.state.terminal:
            return False
        return (attempt, STEP[state]) > (self.attempt, STEP[self.state])


class _Facts(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SpecFacts(_Facts):
    queue: str = JobSpec.model_fields["queue"].default
    resources: Resources = Field(default_factory=Resources)
    replicas: int = JobSpec.model_fields["replicas"].default


class RecordFacts(_Facts):
    """The part of a stored job record telemetry keeps, read at start-up for every job the bucket
    holds: ~4x cheaper than the whole :class:`JobRecord` (33 against 140 us a record, load ~6)."""

    job_id: str
    attempt: int = JobRecord.model_fields["attempt"].default
    state: JobState
    submitted_at: datetime | None = None
    spec: SpecFacts


def requested(spec: JobSpec | SpecFacts) -> tuple[float, int]:
    """(cores, memory bytes) a job asks for, its replicas together."""
    return spec.resources.cpu * spec.replicas, spec.resources.memory * 1024 * 1024 * spec.replicas


class JobStates:
    def __init__(self) -> None:
        self.jobs: dict[str, JobFacts] = {}
        # jobs finished before a start from the jobs index, by state (the index's counts): their
        # facts are not read, only counted (app.py, ``start_from_index``)
        self.finished_before: Counter[str] = Counter()

    def seed(self, records: Iterable[JobRecord | RecordFacts]) -> None:
        for r in records:
            known = self.jobs.get(r.job_id)
            if known is None or known.behind(r.attempt, r.state):
                self.jobs[r.job_id] = JobFacts(
                    r.attempt, r.state, r.spec.queue, r.submitted_at, *requested(r.spec), r.spec.replicas > 1
                )

    def get(self, job_id: str) -> JobFacts | None:
        return self.jobs.get(job_id)

    def apply(self, event: JobEvent) -> JobFacts | None:
        """Take what ``event`` says about its job; returns the job's facts (None: not a job
        telemetry tracks, e.g. a spec rejected before any record existed)."""
        state = STATE_OF_EVENT.get(event.type)
        known = self.jobs.get(event.job_id)
        if state is None:
            return known
        attempt = event.next_attempt if event.type == "requeued" else event.attempt
        if known is None:
            queue = getattr(event, "queue", None) or (
                event.spec.queue if event.type == "submitted" else UNKNOWN_QUEUE
            )
            submitted = event.time if event.type == "submitted" else None
            asked = requested(event.spec) if event.type == "submitted" else (0.0, 0)
            gang = event.type == "submitted" and event.spec.replicas > 1
            known = self.jobs[event.job_id] = JobFacts(attempt, state, queue, submitted, *asked, gang)
            return known
        if event.type == "submitted":
            if known.submitted_at is None:
                known.submitted_at = event.time
            if not known.cpu:
                known.cpu, known.memory_bytes = requested(event.spec)
            known.gang = event.spec.replicas > 1
        queue = getattr(event, "queue", None)
        if known.queue == UNKNOWN_QUEUE and isinstance(queue, str) and queue:
            known.queue = queue
        if known.behind(attempt, state):
            known.attempt, known.state = attempt, state
        return known

    def tally(self) -> tuple[Counter[str], Counter[str]]:
        """(jobs by state, pending jobs by queue). Every queue a known job belongs to has an entry,
        0 when nothing waits in it (and ``default`` always): a queue that drained reads 0 instead
        of losing its series, which a dashboard or an alert would show as stale."""
        by_state: Counter[str] = Counter(self.finished_before)
        depth: Counter[str] = Counter({DEFAULT_QUEUE: 0})
        for facts in self.jobs.values():
            by_state[facts.state.value] += 1
            if facts.state.pending:
                depth[facts.queue] += 1
            elif facts.queue not in depth and facts.queue != UNKNOWN_QUEUE:
                depth[facts.queue] = 0
        return by_state, depth
