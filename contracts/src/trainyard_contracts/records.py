"""Read models kept in KV buckets: the job record, executor heartbeats, model references."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from trainyard_contracts._time import utcnow
from trainyard_contracts.spec import JobSpec
from trainyard_contracts.states import JobState

SCHEMA_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Capacity(_Model):
    cpu: float = Field(ge=0)
    memory: int = Field(ge=0, description="MiB")
    gpu: int = Field(0, ge=0)


class AttemptInfo(_Model):
    number: int = Field(ge=1)
    executor_id: str | None = None
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    state: JobState | None = None
    exit_code: int | None = None
    reason: str | None = None


class ModelRef(_Model):
    name: str
    version: int
    run_id: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    git_commit: str | None = None


class JobRecord(_Model):
    """The job as every service sees it; each change is a compare-and-set on its KV revision."""

    schema_version: int = SCHEMA_VERSION
    job_id: str
    spec: JobSpec
    state: JobState
    attempt: int = Field(1, ge=1, description="the current attempt; executors fence on it")
    executor_id: str | None = None
    submitted_at: datetime
    updated_at: datetime
    not_before: datetime | None = Field(None, description="a retry waits for its backoff")
    retries_used: int = 0
    cancel_requested: bool = False
    reason: str | None = None
    exit_code: int | None = None
    outputs_uri: str | None = None
    model: ModelRef | None = None
    submitted_by: str | None = None
    traceparent: str | None = Field(None, description="W3C trace context: one job, one trace")
    attempts: list[AttemptInfo] = Field(default_factory=list)
    state_times: dict[str, datetime] = Field(default_factory=dict)

    def current_attempt(self) -> AttemptInfo | None:
        for info in reversed(self.attempts):
            if info.number == self.attempt:
                return info
        return None


class AttemptRef(_Model):
    job_id: str
    attempt: int


class ExecutorHeartbeat(_Model):
    """An executor's lease: kept in the executors bucket, renewed every few seconds."""

    executor_id: str
    backend: str
    pool: str = "default"
    capacity: Capacity
    running: list[AttemptRef] = Field(default_factory=list)
    time: datetime = Field(default_factory=utcnow)
    started_at: datetime = Field(default_factory=utcnow)
    lease_seconds: float = 15.0
    version: str = "0.1.0"

    def expired(self, now: datetime) -> bool:
        return (now - self.time).total_seconds() > self.lease_seconds


class ModelVersionRecord(_Model):
    """A registered model version as the registry publishes it (models bucket, key name.version)."""

    name: str
    version: int
    job_id: str
    attempt: int = 1
    run_id: str | None = None
    model_id: str | None = None
    source: str | None = None
    git_repo: str | None = None
    git_commit: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    params: dict[str, str] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def key(self) -> str:
        return f"{self.name}.{self.version}"
