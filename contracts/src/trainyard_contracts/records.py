"""Read models kept in KV buckets: the job record, executor heartbeats, model references."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trainyard_contracts._time import utcnow
from trainyard_contracts.spec import DIGEST_PATTERN, JobSpec, strip_url_credentials
from trainyard_contracts.states import JobState
from trainyard_contracts.stepoutputs import StepOutputs

SCHEMA_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Capacity(_Model):
    cpu: float = Field(ge=0)
    memory: int = Field(ge=0, description="MiB")
    gpu: int = Field(0, ge=0)


class AttemptUsage(_Model):
    """What an attempt's processes used, as its executor measured them (docs/insight.md)."""

    cpu_seconds: float = Field(ge=0, description="user + system CPU time of the job's processes")
    peak_memory_bytes: int = Field(
        ge=0,
        description="the largest resident set measured: any one of the job's processes at its end, or "
        "all of them together in a sample taken while it ran (where the executor samples)",
    )

    gpu_seconds: float | None = Field(
        None,
        ge=0,
        description="GPU time in use, the attempt's devices together (NVML's utilisation over the "
        "samples: one GPU fully busy for an hour is 3600; GPU-hours = gpu_seconds / 3600); absent "
        "when no GPU was sampled",
    )
    peak_gpu_memory_bytes: int | None = Field(
        None, ge=0, description="the most device memory used in a sample, the attempt's devices together"
    )

    def plus(self, other: AttemptUsage) -> AttemptUsage:
        """Both together (the members of a split gang): CPU and GPU time add up, the peaks are
        the larger."""
        return AttemptUsage(
            cpu_seconds=self.cpu_seconds + other.cpu_seconds,
            peak_memory_bytes=max(self.peak_memory_bytes, other.peak_memory_bytes),
            gpu_seconds=_sum_known(self.gpu_seconds, other.gpu_seconds),
            peak_gpu_memory_bytes=_max_known(self.peak_gpu_memory_bytes, other.peak_gpu_memory_bytes),
        )


def _sum_known(a: float | None, b: float | None) -> float | None:
    return None if a is None and b is None else (a or 0.0) + (b or 0.0)


def _max_known(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else max(a or 0, b or 0)


class AttemptRuntime(_Model):
    """What an attempt ran in, as its executor saw it: a version's lineage (docs/models.md)."""

    image_digest: str | None = Field(
        None, max_length=200, description="the image the container ran, by content (sha256:...)"
    )
    runtime_lock: str | None = Field(
        None,
        max_length=200,
        description="the runtime env (runtime_env.pip) as installed: sha256 of its packages (pip freeze)",
    )


class AttemptInfo(_Model):
    number: int = Field(ge=1)
    executor_id: str | None = None
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    state: JobState | None = None
    exit_code: int | None = None
    reason: str | None = None
    stopping: bool = Field(
        False,
        description="the scheduler ended this attempt in the record (preempted, executor lost) while "
        "its process may still run; its executor clears it once the process has ended. Its room "
        "stays counted until then",
    )
    gpus: list[int] = Field(
        default_factory=list,
        max_length=1024,
        description="the GPU indices the scheduler assigned this attempt on its executor (empty: "
        "none, or its executor reports no devices)",
    )
    usage: AttemptUsage | None = Field(
        None, description="what the attempt used, once it ended (None: its backend does not measure)"
    )
    runtime: AttemptRuntime | None = Field(
        None, description="the image digest and runtime-env lock it ran with, once it ended (None: unknown)"
    )


class GangMember(_Model):
    """One executor of a gang split across executors: the global ranks it runs, and how they went.

    Each member writes its own entry by compare-and-set: ``started_at`` once its ranks are
    launched (a redelivered start finds it set and launches nothing), the rest when they end.
    """

    executor_id: str
    ranks: list[int] = Field(min_length=1, description="the global ranks this executor runs")
    started_at: datetime | None = None
    ended_at: datetime | None = None
    state: JobState | None = Field(
        None, description="how its ranks ended: succeeded, failed, timed_out or cancelled; None: not yet"
    )
    exit_code: int | None = None
    reason: str | None = None
    outputs_uri: str | None = None
    outputs: StepOutputs | None = None
    outputs_digest: str | None = Field(None, pattern=DIGEST_PATTERN)
    gpus: list[int] = Field(
        default_factory=list,
        max_length=1024,
        description="the GPU indices assigned to its ranks on this executor: gpu-per-replica "
        "per rank, in rank order",
    )


class GangPlacement(_Model):
    """Where the ranks of one attempt of a gang split across executors run and meet.

    ``executor_id`` of the record is rank 0's executor (the rendezvous master); the scheduler picks
    ``master_addr``/``master_port`` once, in the compare-and-set that schedules the attempt, so a
    re-sent start command is the same command.
    """

    attempt: int = Field(ge=1, description="the attempt this placement belongs to")
    master_addr: str
    master_port: int = Field(ge=1, le=65535)
    members: list[GangMember] = Field(min_length=2)

    @property
    def world_size(self) -> int:
        return sum(len(m.ranks) for m in self.members)

    def member(self, executor_id: str) -> GangMember | None:
        for m in self.members:
            if m.executor_id == executor_id:
                return m
        return None

    def with_member(self, executor_id: str, **changes: object) -> GangPlacement:
        members = [m.model_copy(update=changes) if m.executor_id == executor_id else m for m in self.members]
        return self.model_copy(update={"members": members})


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
    outputs: StepOutputs | None = Field(
        None, description="what the job wrote to outputs.json when it succeeded (name -> value)"
    )
    outputs_digest: str | None = Field(
        None,
        pattern=DIGEST_PATTERN,
        description="a pipeline step with dependents that succeeded: sha256 of its packed outputs "
        "folder in the step outputs bucket (its dependents' $TRAINYARD_INPUTS/<step>/)",
    )
    model: ModelRef | None = None
    submitted_by: str | None = None
    traceparent: str | None = Field(None, description="W3C trace context: one job, one trace")
    attempts: list[AttemptInfo] = Field(default_factory=list)
    state_times: dict[str, datetime] = Field(default_factory=dict)
    gang: GangPlacement | None = Field(
        None,
        description="a gang split across executors: every executor of the attempt it names and its "
        "ranks (None: the job runs on executor_id alone)",
    )
    secrets_stored: bool = Field(
        False,
        description="the spec's secret env values and source credential are kept in the job "
        "secrets bucket, and the spec here holds *** in their place (False: a record written "
        "before that bucket, whose spec still holds them)",
    )
    idempotency_slot: str | None = Field(
        None,
        max_length=256,
        description="the idempotency bucket's key that names this job (a digest of the submitter's "
        "key), so that purging the job removes it too; None: submitted without a key",
    )
    admission: str | None = Field(
        None,
        max_length=128,
        description="the submission service's signature of what it admitted (trainyard_contracts."
        "admission): the scheduler places only records whose signature verifies, when an admission "
        "key is configured; None: written without one",
    )

    def split_gang(self) -> GangPlacement | None:
        """The current attempt's split gang, if it has one (a placement of an older attempt is
        history, never a fence)."""
        gang = self.gang
        return gang if gang is not None and gang.attempt == self.attempt else None

    def runs_on(self, executor_id: str) -> bool:
        """Is ``executor_id`` an executor of the current attempt (rank 0's or a gang member)?"""
        if self.executor_id == executor_id:
            return True
        gang = self.split_gang()
        return gang is not None and gang.member(executor_id) is not None

    def executors(self) -> list[str]:
        """Every executor of the current attempt: rank 0's first."""
        gang = self.split_gang()
        if gang is not None:
            return [m.executor_id for m in gang.members]
        return [self.executor_id] if self.executor_id else []

    def gpu_devices(self, attempt: int, executor_id: str) -> list[int]:
        """The GPU indices ``attempt`` was assigned on ``executor_id`` (a split gang's member's own)."""
        gang = self.gang
        if gang is not None and gang.attempt == attempt:
            member = gang.member(executor_id)
            if member is not None:
                return list(member.gpus)
        for info in self.attempts:
            if info.number == attempt and info.executor_id == executor_id:
                return list(info.gpus)
        return []

    def current_attempt(self) -> AttemptInfo | None:
        for info in reversed(self.attempts):
            if info.number == self.attempt:
                return info
        return None


class AttemptRef(_Model):
    job_id: str
    attempt: int


class PortRange(_Model):
    """Ports ``first`` to ``last``, both included."""

    first: int = Field(ge=1, le=65535)
    last: int = Field(ge=1, le=65535)

    @model_validator(mode="after")
    def _ordered(self) -> PortRange:
        if self.last < self.first:
            raise ValueError(f"port range {self.first}-{self.last}: last is below first")
        return self


class GpuDevice(_Model):
    """One GPU of an executor's machine, as ``nvidia-smi`` numbers it."""

    index: int = Field(ge=0, description="the CUDA/NVML index on its machine")
    uuid: str = Field(max_length=128, description="the driver's stable id (GPU-...)")


class Isolation(_Model):
    """What an executor's backend keeps a job from, as it is configured and found on its machine
    (docs/executors.md, "Isolation"): reported in its heartbeat, shown by ``trainyard executors``."""

    job_user: str = Field(
        max_length=200,
        description="who a job runs as: 'uid per attempt 200000-200999', 'uid 1000', "
        "'root', 'container uid 10001:10001', 'image user (root allowed per queue)'...",
    )
    root: bool = Field(description="jobs may run as root (uid 0) on this executor")
    containment: str = Field(
        max_length=200,
        description="what holds a job's processes together: 'cgroup v2', 'process group', 'container', 'pod'",
    )
    capabilities: str | None = Field(
        None, max_length=200, description="containers: 'all dropped' or what is kept; None: processes"
    )
    no_new_privileges: bool | None = Field(None, description="containers: no-new-privileges set")
    gang_network: str = Field(
        max_length=200,
        description="how a gang's ranks meet: 'loopback of the host' (local), 'bridge network "
        "per gang', 'network policy per gang'...",
    )
    notes: list[str] = Field(default_factory=list, max_length=8, description="caveats, one line each")


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
    draining: bool = Field(
        False,
        description="shutting down: it hands its attempts back and takes no new ones; its lease "
        "still holds them until they have stopped",
    )
    advertise_host: str | None = Field(
        None,
        description="the address other executors' ranks reach this one at when it hosts rank 0 of a "
        "split gang (None: an older executor; it gets no split gang)",
    )
    rendezvous_ports: PortRange | None = Field(
        None, description="the ports a split gang's master may listen on here"
    )
    gpus: list[GpuDevice] = Field(
        default_factory=list,
        max_length=1024,
        description="the GPUs found on this machine, by index; the scheduler assigns them per attempt "
        "(empty: none found, an older executor, or a pool whose device plugin assigns them)",
    )

    isolation: Isolation | None = Field(
        None, description="what its backend keeps a job from (None: an older executor, or unknown)"
    )

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
    queue: str | None = Field(
        None, description="the job's queue (= team): a team token lists only its own queue's versions"
    )

    @field_validator("git_repo")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        # versions registered before credentials were split out of source.repo may still hold one
        return strip_url_credentials(value) if value else value

    @property
    def key(self) -> str:
        return f"{self.name}.{self.version}"

    def ref(self) -> ModelRef:
        """What the job's record and the registered event say of this version: its fields a
        :class:`ModelRef` has."""
        return ModelRef.model_validate(self.model_dump(include=set(ModelRef.model_fields)))
