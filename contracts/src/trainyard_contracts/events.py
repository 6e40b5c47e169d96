"""One event envelope and the discriminated union of job events.

Every event carries the envelope fields (event id, job id, attempt, time, schema version, trace
context); ``type`` says which event it is and is also the last token of its subject.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from trainyard_contracts._time import utcnow
from trainyard_contracts.records import Capacity
from trainyard_contracts.spec import DIGEST_PATTERN, FieldError, JobSpec
from trainyard_contracts.stepoutputs import StepOutputs
from trainyard_contracts.subjects import Subjects, msg_id

EVENT_SCHEMA_VERSION = 1


class Envelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    job_id: str = Field(min_length=1, max_length=64)
    attempt: int = Field(1, ge=0)
    time: datetime = Field(default_factory=utcnow)
    schema_version: int = EVENT_SCHEMA_VERSION
    traceparent: str | None = Field(None, description="W3C trace context of the job's trace")
    if TYPE_CHECKING:
        # every event declares its own Literal ``type`` (the union's discriminator); declared here
        # for the type checker only, so the envelope itself has no such field in its schema
        type: str

    def subject(self, subjects: Subjects) -> str:
        return subjects.job(self.job_id, self.type)

    def msg_id(self) -> str:
        return msg_id(self.job_id, self.attempt, self.type)


class JobSubmitted(Envelope):
    type: Literal["submitted"] = "submitted"
    spec: JobSpec
    submitted_by: str | None = None


class JobRejected(Envelope):
    type: Literal["rejected"] = "rejected"
    errors: list[FieldError]
    intake_id: str | None = None


class JobQueued(Envelope):
    type: Literal["queued"] = "queued"
    queue: str


class JobScheduled(Envelope):
    type: Literal["scheduled"] = "scheduled"
    executor_id: str = Field(description="the executor of rank 0 (the only one, unless split)")
    resources: Capacity
    executors: list[str] = Field(
        default_factory=list,
        description="a gang split across executors: every member, rank 0's first; empty otherwise",
    )


class JobRunning(Envelope):
    type: Literal["running"] = "running"
    executor_id: str
    workdir: str | None = None


class JobSucceeded(Envelope):
    type: Literal["succeeded"] = "succeeded"
    executor_id: str | None = None
    exit_code: int = 0
    outputs_uri: str | None = None
    outputs: StepOutputs | None = Field(
        None, description="what the job wrote to outputs.json (name -> value; at most 64 KiB)"
    )
    outputs_digest: str | None = Field(
        None,
        pattern=DIGEST_PATTERN,
        description="a pipeline step with dependents: sha256 of its packed outputs folder in the "
        "step outputs bucket",
    )
    duration_seconds: float | None = None
    declares_model: bool | None = Field(
        None,
        description="whether the job's spec names a model to register (outputs.model); None: not "
        "said (an older executor), so the registry reads the record to know",
    )


class JobFailed(Envelope):
    type: Literal["failed"] = "failed"
    executor_id: str | None = None
    exit_code: int | None = None
    reason: str
    duration_seconds: float | None = None


class JobTimedOut(Envelope):
    type: Literal["timed_out"] = "timed_out"
    executor_id: str | None = None
    reason: str
    duration_seconds: float | None = None


class JobCancelled(Envelope):
    type: Literal["cancelled"] = "cancelled"
    reason: str = "cancelled"
    by: str | None = None


class JobRequeued(Envelope):
    type: Literal["requeued"] = "requeued"
    reason: Literal["retry", "executor_lost", "preempted"]
    next_attempt: int
    not_before: datetime | None = None
    detail: str | None = None


CANCEL_REQUESTED_REASON = "cancelled by request"


class JobCancelRequested(Envelope):
    """A cancel asked for (the API's, or a sweep's pruner with ``reason: pruned``): the job ends
    ``cancelled`` with ``reason`` (a pending job's with "cancelled before it ran" unless the
    request gave a reason of its own)."""

    type: Literal["cancel_requested"] = "cancel_requested"
    by: str | None = None
    reason: str = Field(CANCEL_REQUESTED_REASON, max_length=256)


class ModelRegistered(Envelope):
    type: Literal["model_registered"] = "model_registered"
    model_name: str
    version: int
    run_id: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    git_commit: str | None = None


JobEvent = Annotated[
    JobSubmitted
    | JobRejected
    | JobQueued
    | JobScheduled
    | JobRunning
    | JobSucceeded
    | JobFailed
    | JobTimedOut
    | JobCancelled
    | JobRequeued
    | JobCancelRequested
    | ModelRegistered,
    Field(discriminator="type"),
]
TERMINAL_EVENT_TYPES = frozenset({"succeeded", "failed", "timed_out", "cancelled", "rejected"})
JOB_EVENT_ADAPTER: TypeAdapter[JobEvent] = TypeAdapter(JobEvent)


def parse_job_event(data: bytes | str) -> JobEvent:
    return JOB_EVENT_ADAPTER.validate_json(data)


class LogLine(BaseModel):
    model_config = ConfigDict(frozen=True)

    stream: Literal["stdout", "stderr", "system"]
    text: str
    time: datetime


class LogChunk(BaseModel):
    """A batch of a job's output lines; ``seq`` orders chunks within an attempt."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    attempt: int
    replica: int = 0
    seq: int = Field(ge=0)
    lines: list[LogLine]


class IntakeReply(BaseModel):
    """What the bus intake answers (on the subject in the ``Trainyard-Reply-To`` header)."""

    model_config = ConfigDict(frozen=True)

    accepted: bool
    job_id: str
    duplicate: bool = False
    errors: list[FieldError] = Field(default_factory=list)
