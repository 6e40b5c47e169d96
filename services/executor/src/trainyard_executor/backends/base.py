"""Backend-neutral types for running one attempt of a job.

Pure data and protocols: no I/O here, no NATS. A backend turns an :class:`AttemptLaunch` into a
:class:`RunningAttempt`, streams the attempt's output lines to a :data:`LineSink` and eventually
reports an :class:`AttemptOutcome`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from trainyard_contracts.records import AttemptRuntime, AttemptUsage
from trainyard_shared.blobs import UnpackLimits

__all__ = [
    "Adopting",
    "AttemptLaunch",
    "AttemptOutcome",
    "Backend",
    "FoundAttempt",
    "Gang",
    "LineSink",
    "OutcomeKind",
    "Resources",
    "RunningAttempt",
]

OutcomeKind = Literal["succeeded", "failed", "timed_out", "cancelled"]


@dataclass(frozen=True)
class Gang:
    """The ranks of a distributed attempt that one backend runs, and where all ranks meet.

    Each rank is a process (local) or a container of its own, with torchrun's variables (see
    :func:`trainyard_executor.jobenv.rank_env`). ``ranks`` are global ranks; the position of a
    rank in that tuple is its ``LOCAL_RANK``.
    """

    master_addr: str
    master_port: int
    world_size: int
    ranks: tuple[int, ...]

    def env(self, local_rank: int) -> dict[str, str]:
        """What torchrun sets for a worker: enough for ``init_process_group("env://")`` and for
        code that reads LOCAL_RANK to pick its device. This backend is one torchrun "node": its
        ranks are the node's local ranks, GROUP_RANK the node's index (ranks split evenly)."""
        local_world = len(self.ranks)
        rank = self.ranks[local_rank]
        return {
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
            "WORLD_SIZE": str(self.world_size),
            "RANK": str(rank),
            "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(local_world),
            "GROUP_RANK": str(min(self.ranks) // local_world),
            "GROUP_WORLD_SIZE": str(-(-self.world_size // local_world)),
            "ROLE_RANK": str(rank),
            "ROLE_WORLD_SIZE": str(self.world_size),
            "TRAINYARD_RANK": str(rank),
        }


@dataclass(frozen=True)
class AttemptLaunch:
    job_id: str
    attempt: int
    argv: list[str]
    """Never a shell string; run as given (``argv[0]`` looked up on the PATH of the child's env)."""
    env: dict[str, str]
    """Job env + TRAINYARD_* vars, already merged by the caller."""
    workdir: Path
    """Per-attempt directory, created by the backend if missing."""
    timeout_s: float | None
    """Wall-clock limit of the job process (not of the source checkout / runtime env build)."""
    source_repo: str | None = None
    """Git repo (local path or URL) to check out; None = run in ``workdir``."""
    source_commit: str | None = None
    """Commit (or any rev git understands) to check out; None = the repo's HEAD."""
    workdir_archive: Path | None = None
    """The job's packed workdir on this machine (spec ``workdir``), unpacked into ``src`` as the
    job's cwd; exclusive with ``source_repo``."""
    workdir_limits: UnpackLimits = field(default_factory=UnpackLimits)
    """Caps on unpacking ``workdir_archive`` (the executor's max_workdir_* settings)."""
    runtime_pip: tuple[str, ...] = ()
    """Pip requirements for a cached venv (Ray runtime_env style)."""
    output_subdir: str = "outputs"
    """Relative dir (under the job's cwd) where the job writes its model."""
    grace_s: float = 10.0
    """SIGTERM -> SIGKILL grace on cancel/timeout."""
    # -- used by the container backends; the local backend ignores them --------------------------
    image: str | None = None
    """Container image; None = the backend's default."""
    cpu: float = 0.0
    """CPU limit (0 = none)."""
    memory_mb: int = 0
    """Memory limit in MiB (0 = none)."""
    gpu: int = 0
    """GPUs to attach."""
    gpu_devices: tuple[int, ...] | None = None
    """The GPU indices this executor's ranks may use, ``gpu`` per rank in local-rank order (the
    scheduler's assignment); ``()`` none; None: nothing assigned, GPUs are counted as before."""
    inherited_env: tuple[str, ...] = ()
    """Keys of ``env`` that came from the executor's own environment rather than the job spec."""
    secret_env: tuple[str, ...] = ()
    """Keys of ``env`` whose values are secret (spec ``secret_env``): a backend that writes the env
    into an object others may read (a Kubernetes Job) keeps them out of it."""
    gang: Gang | None = None
    """Several ranks (``replicas > 1``); None: one process, no rendezvous variables."""
    checkpoint_dir: Path | None = None
    """Kept across the attempts of one job (TRAINYARD_CHECKPOINT_DIR); container backends mount it."""
    run_as_root: bool = False
    """Container backends: the image's own user instead of the non-root default (spec
    ``run_as_root``, which only a queue with ``allow_root`` accepts)."""
    inputs_dir: Path | None = None
    """A pipeline step's dependencies' outputs folders, unpacked on this host by the executor
    (``TRAINYARD_INPUTS``; stepfolders.py); container backends mount it read-only."""
    workdir_digest: str | None = None
    """The spec's packed workdir by digest, for a backend that fetches it where the job runs
    (Kubernetes: ``fetches_in_pod``; ``workdir_archive`` is None then)."""
    input_digests: tuple[tuple[str, str], ...] = ()
    """The spec's ``inputs`` as ``(step path, digest)``, for a backend that fetches them where the
    job runs (Kubernetes; ``inputs_dir`` is None then)."""
    pass_outputs: bool = False
    """The spec's ``pass_outputs``: a later step depends on this one's outputs folder."""


@dataclass(frozen=True)
class AttemptOutcome:
    kind: OutcomeKind
    exit_code: int | None
    """Exit code of the job process; negative for a signal; None if it never started."""
    reason: str
    """Human readable, e.g. "exit code 3", "timed out after 5s", "cancelled"."""
    output_dir: Path
    usage: AttemptUsage | None = None
    """What the attempt's processes used (None: this backend does not measure it)."""
    runtime: AttemptRuntime | None = None
    """The image digest and runtime-env lock it ran with (None: neither known)."""


@dataclass(frozen=True)
class Resources:
    cpu: float
    memory_mb: int
    gpu: int


LineSink = Callable[[str, str], Awaitable[None]]
"""``(stream, line)``: stream is "stdout" or "stderr", line has no trailing newline."""


class RunningAttempt(Protocol):
    pid: int | None

    async def wait(self) -> AttemptOutcome:
        """Wait for the attempt to end; honours ``timeout_s`` (-> ``timed_out``)."""
        ...

    async def cancel(self, grace_s: float | None = None) -> None:
        """SIGTERM the process group, SIGKILL after grace; ``wait()`` then returns ``cancelled``."""
        ...


class Backend(Protocol):
    name: str

    async def start(self, launch: AttemptLaunch, on_line: LineSink) -> RunningAttempt: ...

    def capacity(self) -> Resources: ...


@dataclass(frozen=True)
class FoundAttempt:
    """An attempt a previous run of this executor left on the backend (found after a restart)."""

    job_id: str
    attempt: int
    ref: str
    """The backend's own handle (a pid file, container ids)."""
    detail: str
    """For logs: pids, container names."""


class Adopting(Protocol):
    """A backend whose attempts survive a restart of the executor (local, docker, podman).

    After a restart the executor lists what it left (:meth:`find_attempts`), adopts the attempts
    its job records still call current (their output keeps streaming, their end is reported) and
    discards the rest (stopped, so a job never runs twice at once). An attempt handle may have
    ``release()``: the executor calls it once the outcome is recorded, after which a restart no
    longer finds the attempt; and ``detach()``: stop watching, leave it running for the next
    executor to adopt.
    """

    async def find_attempts(self) -> list[FoundAttempt]: ...

    async def adopt(self, found: FoundAttempt, on_line: LineSink) -> RunningAttempt: ...

    async def discard(self, found: FoundAttempt, grace_s: float) -> None: ...
