"""A pipeline run: its record (the workflow service's KV value) and its events.

Events live under ``<prefix>.pipeline.<run_id>.<event>``: one run is watched with
``<prefix>.pipeline.<run_id>.>``, one kind across runs with ``<prefix>.pipeline.*.<event>``.
Each is published with a deterministic ``Nats-Msg-Id`` (:meth:`PipelineEnvelope.msg_id`), so a
service that restarts between its state change and the event never doubles it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from trainyard_contracts._time import utcnow
from trainyard_contracts.arrays import parse_array
from trainyard_contracts.spec import DIGEST_PATTERN, FieldError
from trainyard_contracts.workflow import RUN_ID_PATTERN, PipelineSpec

RunId = Annotated[str, Field(pattern=RUN_ID_PATTERN)]


class StepState(StrEnum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    skipped = "skipped"
    cancelled = "cancelled"


TERMINAL_STEP_STATES = frozenset(
    {StepState.succeeded, StepState.failed, StepState.skipped, StepState.cancelled}
)


class RunState(StrEnum):
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class ChildJob(BaseModel):
    """One job of a step (an array has one per index): submitted under ``key``, known as
    ``job_id`` once the intake answered, ``outcome`` once it ended."""

    model_config = ConfigDict(frozen=True)

    key: str = Field(description="the idempotency key it was submitted with (run, step, index, attempt)")
    job_id: str | None = None
    outcome: Literal["succeeded", "failed", "cancelled", "timed_out", "rejected"] | None = None
    outputs_digest: str | None = Field(
        None,
        pattern=DIGEST_PATTERN,
        description="succeeded, and later steps depend on it: its packed outputs folder (their "
        "$TRAINYARD_INPUTS/<step>/)",
    )


class StepCache(BaseModel):
    """A ``cache: true`` step's use of the step cache: ``lookup`` while the workflow service looks
    (nothing is submitted before it has), then ``hit`` (the step's jobs are ``from_run``'s, nothing
    submitted) or ``miss`` (its jobs run; a success is remembered under ``key``)."""

    model_config = ConfigDict(frozen=True)

    state: Literal["lookup", "hit", "miss"]
    key: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="sha256 of the rendered spec and inputs"
    )
    from_run: str | None = Field(None, max_length=64, description="hit: the run whose step's jobs are reused")


class StepRun(BaseModel):
    model_config = ConfigDict(frozen=True)

    state: StepState = StepState.pending
    attempt: int = Field(1, ge=1, description="the step's attempt within the run (a retry adds one)")
    jobs: dict[int, ChildJob] = Field(default_factory=dict, description="array index (0 alone) -> job")
    reason: str | None = None
    cache: StepCache | None = Field(None, description="`cache: true` steps: the lookup and its answer")


CHILD_STATES = ("not_started", "submitted", "succeeded", "failed", "timed_out", "cancelled", "rejected")
MAX_REPLY_JOBS = 1000  # per step, in a reply (a 10,000-job array's run is over a megabyte)
MAX_OPEN_JOBS = 10_000


class PipelineRun(BaseModel):
    """The run record: a compare-and-set on its KV revision for every change."""

    model_config = ConfigDict(frozen=True)

    run_id: RunId
    spec: PipelineSpec
    state: RunState = RunState.running
    steps: dict[str, StepRun]
    cancel_requested: bool = False
    submitted_by: str | None = None
    created: datetime = Field(default_factory=utcnow)
    ended: datetime | None = None
    attempt: int = Field(1, ge=1, description="the run's attempt: `pipeline retry` adds one")
    no_cache: bool = Field(
        False, description="`--no-cache`: cached steps run (and are remembered) without a lookup"
    )

    def trimmed(self, max_jobs: int) -> PipelineRun:
        """This run with at most ``max_jobs`` jobs per step (the lowest indices), for a reply that
        must fit a message; :meth:`job_counts` says how many there are in all."""
        if all(len(step.jobs) <= max_jobs for step in self.steps.values()):
            return self
        steps = {
            name: step.model_copy(update={"jobs": dict(sorted(step.jobs.items())[:max_jobs])})
            for name, step in self.steps.items()
        }
        return self.model_copy(update={"steps": steps})

    def job_counts(self) -> dict[str, dict[str, int]]:
        """Per step, its jobs per state: not_started (not submitted yet), submitted (queued or
        running), then how each ended (succeeded, failed, timed_out, cancelled, rejected)."""
        out: dict[str, dict[str, int]] = {}
        for spec in self.spec.steps:
            jobs = self.steps[spec.name].jobs
            counts = dict.fromkeys(CHILD_STATES, 0)
            counts["not_started"] = (parse_array(spec.array).count if spec.array else 1) - len(jobs)
            for job in jobs.values():
                counts[job.outcome or "submitted"] += 1
            out[spec.name] = counts
        return out

    def open_job_ids(self) -> list[str]:
        """Ids of the run's jobs that were submitted and have not ended (what a cancel stops). A
        sweep step's "job" is its sweep: the workflow service cancels it, and it its trials."""
        return [
            job.job_id
            for spec in self.spec.steps
            if spec.sweep is None
            for job in self.steps[spec.name].jobs.values()
            if job.job_id is not None and job.outcome is None
        ]

    @classmethod
    def start(
        cls, run_id: str, spec: PipelineSpec, submitted_by: str | None = None, no_cache: bool = False
    ) -> PipelineRun:
        return cls(
            run_id=run_id,
            spec=spec,
            steps={step.name: StepRun() for step in spec.steps},
            submitted_by=submitted_by,
            no_cache=no_cache,
        )


class PipelineEnvelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    run_id: RunId
    time: datetime = Field(default_factory=utcnow)
    if TYPE_CHECKING:
        # every event declares its own Literal ``type`` (the union's discriminator); declared here
        # for the type checker only, so the envelope itself has no such field in its schema
        type: str

    def msg_id(self) -> str:
        return f"pipeline:{self.run_id}:{self._identity()}"

    def _identity(self) -> str:
        return self.type


class PipelineStarted(PipelineEnvelope):
    type: Literal["started"] = "started"
    pipeline: str
    steps: list[str]
    submitted_by: str | None = None


class StepSubmitted(PipelineEnvelope):
    type: Literal["step_submitted"] = "step_submitted"
    step: str
    index: int
    attempt: int
    job_id: str

    def _identity(self) -> str:
        return f"{self.type}:{self.step}:{self.index}:{self.attempt}"


class StepEnded(PipelineEnvelope):
    type: Literal["step_ended"] = "step_ended"
    step: str
    attempt: int
    state: StepState
    reason: str | None = None
    cached_from: str | None = Field(
        None, max_length=64, description="a cache hit: the run whose step's jobs it reused (none submitted)"
    )

    def _identity(self) -> str:
        return f"{self.type}:{self.step}:{self.attempt}"


class PipelineFinished(PipelineEnvelope):
    type: Literal["finished"] = "finished"
    state: RunState
    attempt: int = Field(1, ge=1, description="the run's attempt that finished")

    def _identity(self) -> str:
        # the first attempt keeps the id it always had; a retried run finishes once per attempt
        return self.type if self.attempt == 1 else f"{self.type}:{self.attempt}"


class PipelineCancelRequested(PipelineEnvelope):
    type: Literal["cancel_requested"] = "cancel_requested"
    by: str | None = None


class PipelineRetried(PipelineEnvelope):
    """``pipeline retry``: the run goes on as ``attempt``; ``steps`` run again (succeeded ones kept)."""

    type: Literal["retried"] = "retried"
    attempt: int = Field(ge=2)
    steps: list[str]
    by: str | None = None

    def _identity(self) -> str:
        return f"{self.type}:{self.attempt}"


PipelineEvent = Annotated[
    PipelineStarted
    | StepSubmitted
    | StepEnded
    | PipelineFinished
    | PipelineCancelRequested
    | PipelineRetried,
    Field(discriminator="type"),
]
PIPELINE_EVENT_ADAPTER: TypeAdapter[PipelineEvent] = TypeAdapter(PipelineEvent)


def parse_pipeline_event(data: bytes | str) -> PipelineEvent:
    return PIPELINE_EVENT_ADAPTER.validate_json(data)


class PipelineReply(BaseModel):
    """The workflow service's answer to a request (run, status, cancel): the run or field errors."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    run: PipelineRun | None = None
    runs: list[PipelineRun] = Field(default_factory=list, max_length=1000)
    errors: list[FieldError] = Field(default_factory=list)
    status: int = Field(200, description="the HTTP status the API answers with")
    counts: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="run's steps: jobs per state, all of them (run.jobs may be trimmed)"
    )
    open_job_ids: list[str] = Field(
        default_factory=list,
        max_length=MAX_OPEN_JOBS,
        description="run's jobs not ended (what a cancel stops)",
    )
    trimmed: bool = Field(False, description=f"run holds at most {MAX_REPLY_JOBS} jobs per step")


class PipelineRequest(BaseModel):
    """What the API asks the workflow service on ``<prefix>.workflow.<kind>`` (request/reply):
    ``run`` (pipeline, params), ``status`` and ``cancel`` (run_id), ``retry`` (run_id, and
    ``attempt``: the run's attempt the caller saw end), ``list`` (limit)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pipeline: dict[str, object] | None = Field(None, description="run: the pipeline document")
    params: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=256)
    run_id: str | None = Field(None, max_length=64)
    limit: int = Field(100, ge=1, le=1000)
    attempt: int | None = Field(
        None, ge=1, description="retry: the attempt seen to end; an answer for it again is the same retry"
    )
    by: str | None = Field(None, max_length=256, description="who asks (the API's principal)")
    no_cache: bool = Field(False, description="run: no step-cache lookups (`pipeline run --no-cache`)")
