"""Container backends: one container per attempt, through the Docker Engine API.

The same class serves Docker and Podman (``podman system service`` speaks the Docker API); the one
difference that matters is that every Podman container needs explicit nofile/nproc ulimits.

A job with several replicas runs one container per rank (named ``...-r<rank>``, labelled with
the rank), each with the spec's per-replica limits and torchrun's variables, on a network of the
attempt's own (:mod:`.gang_network`; a gang split across executors: the host's network).

After an executor restart its containers are found by their labels; the current attempts are
adopted (logs followed again from the bytes already shipped, their exit reported), the others
stopped. A container is removed by ``release()`` once the executor has recorded its outcome.

The docker client is synchronous. Every call that can block runs in a thread of its own (not the
loop's default executor, which a few long log streams and waits would exhaust) and hands its
result back to the event loop; log chunks are fed into an ``asyncio.StreamReader`` so lines are
split exactly as the local backend splits them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import docker
from docker.errors import DockerException, ImageNotFound, NotFound
from docker.types import Ulimit

from trainyard_contracts import Isolation
from trainyard_executor.backends.base import (
    AttemptLaunch,
    FoundAttempt,
    LineSink,
    Resources,
)
from trainyard_executor.backends.container_attempt import ContainerAttempt, cursor_name, engine_error
from trainyard_executor.backends.container_dirs import META_DIR, prepare_dirs, prepare_source
from trainyard_executor.backends.container_gang import GangAttempt
from trainyard_executor.backends.container_security import (
    DEFAULT_PIDS_LIMIT,
    DEFAULT_UID,
    hardening,
    identity,
    inputs_mount_mode,
    work_mount_mode,
)
from trainyard_executor.backends.devices import container_devices_env, gpu_request, rank_devices
from trainyard_executor.backends.engine_calls import (
    AlreadyRunning,
    EngineCallFailed,
    EngineCallPolicy,
    EngineStarts,
)
from trainyard_executor.backends.finished import FinishedAttempt
from trainyard_executor.backends.gang_network import (
    MASTER_ALIAS,
    create_network,
    master_address,
    network_name,
    own_network,
    prune_networks,
    remove_network,
)
from trainyard_executor.backends.isolation import container_isolation
from trainyard_executor.backends.jobmetrics import metrics_env
from trainyard_executor.backends.source import SourceError
from trainyard_executor.backends.threads import in_thread
from trainyard_executor.backends.workdir import WorkdirError
from trainyard_executor.jobenv import HOST_ONLY_ENV
from trainyard_shared.hostpaths import read_in

log = logging.getLogger("trainyard.executor.docker")


T = TypeVar("T")


LABEL_JOB = "trainyard.job_id"
LABEL_ATTEMPT = "trainyard.attempt"
LABEL_EXECUTOR = "trainyard.executor"
LABEL_RANK = "trainyard.rank"
LABEL_GANG = "trainyard.gang"
"""A container of a gang: its log lines carry the rank."""
LABEL_STARTED = "trainyard.started"
"""Wall-clock time the attempt started: an adopted attempt keeps its timeout."""
LABEL_TIMEOUT = "trainyard.timeout"
LABEL_GRACE = "trainyard.grace"
LABEL_WORKDIR = "trainyard.workdir"
LABEL_OUTPUT_DIR = "trainyard.output_dir"

NETWORK_LABELS = (LABEL_JOB, LABEL_ATTEMPT, LABEL_EXECUTOR)

WORK_MOUNT = "/trainyard/work"
CHECKPOINTS_MOUNT = "/trainyard/checkpoints"
INPUTS_MOUNT = "/trainyard/inputs"  # TRAINYARD_INPUTS: the dependencies' outputs folders, read-only

# without these every Podman container fails with "error setting rlimit type 7"
PODMAN_ULIMITS: tuple[tuple[str, int, int], ...] = (("nofile", 20000, 20000), ("nproc", 32768, 32768))

MIN_MEMORY_MB = 6  # the engine refuses smaller limits
CAPACITY_RETRY_S = 10.0

POOL_SIZE = 64  # each running attempt keeps three connections open (two log streams, one wait)


@dataclass(frozen=True)
class RunningContainer:
    """A container this backend started, found by its labels."""

    job_id: str
    attempt: int
    container_id: str
    executor_id: str
    state: str
    rank: int = 0


def image_missing_reason(image: str) -> str:
    return f"image not found: {image} — build or pull it first"


class DockerBackend:
    """Attempts as containers on a Docker (or Podman, ``name="podman"``) engine."""

    reads_job_metrics = True  # the work dir is mounted from this host (backends/jobmetrics.py)
    work_dir_on_host = True  # a step's outputs folder is packed here for its dependents

    def __init__(
        self,
        client_factory: Callable[[], Any] | None = None,
        *,
        base_url: str | None = None,
        name: str = "docker",
        executor_id: str = "",
        default_image: str | None = None,
        keep_failed: bool = False,
        init: bool = True,
        gpus: int = 0,
        ulimits: tuple[tuple[str, int, int], ...] | None = None,
        user: tuple[int, int] = (DEFAULT_UID, DEFAULT_UID),
        pids_limit: int = DEFAULT_PIDS_LIMIT,
        engine_calls: EngineCallPolicy | None = None,
    ) -> None:
        policy = engine_calls or EngineCallPolicy()
        if client_factory is None:

            def client_factory() -> Any:
                # the read timeout of a plain call (streams and waits set their own)
                if base_url:
                    return docker.DockerClient(
                        base_url=base_url, max_pool_size=POOL_SIZE, timeout=policy.call_timeout_s
                    )
                return docker.from_env(max_pool_size=POOL_SIZE, timeout=policy.call_timeout_s)

        self._factory = client_factory
        self._client: Any = None
        self._client_lock = threading.Lock()
        self.base_url = base_url
        self.name = name
        self.executor_id = executor_id
        self.default_image = default_image
        self.keep_failed = keep_failed
        self.init = init
        self.gpus = gpus
        self.ulimits = ulimits if ulimits is not None else (PODMAN_ULIMITS if name == "podman" else ())
        self.user = user
        self.pids_limit = pids_limit
        self.starts = EngineStarts(policy)  # the bound on creates/starts, and their retries
        self._capacity: Resources | None = None
        self._capacity_tried = 0.0

    @property
    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = self._factory()
            return self._client

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except DockerException as exc:
            log.debug("engine not reachable", extra={"backend": self.name, "error": str(exc)})
            return False

    # -- capacity -----------------------------------------------------------------------------

    def isolation(self) -> Isolation:
        return container_isolation(self.name, self.user, self.pids_limit)

    def capacity(self) -> Resources:
        """The engine's CPUs and memory (``docker info``); GPUs only as configured.

        Asked once and kept (the heartbeat calls this every period); while the engine cannot be
        reached the capacity is zero, so nothing is placed here, and it is asked again later.
        """
        if self._capacity is not None:
            return self._capacity
        now = time.monotonic()
        if now - self._capacity_tried < CAPACITY_RETRY_S and self._capacity_tried:
            return Resources(cpu=0.0, memory_mb=0, gpu=0)
        self._capacity_tried = now
        try:
            info = self.client.info()
        except DockerException as exc:
            log.warning("container engine not reachable", extra={"backend": self.name, "error": str(exc)})
            return Resources(cpu=0.0, memory_mb=0, gpu=0)
        self._capacity = Resources(
            cpu=float(info.get("NCPU") or 0),
            memory_mb=int(info.get("MemTotal") or 0) // (1024 * 1024),
            gpu=self.gpus,
        )
        return self._capacity

    # -- starting -----------------------------------------------------------------------------

    def container_name(self, launch: AttemptLaunch, local_rank: int = 0) -> str:
        name = f"trainyard-{launch.job_id}-{launch.attempt}"
        return name if launch.gang is None else f"{name}-r{launch.gang.ranks[local_rank]}"

    def labels(
        self, launch: AttemptLaunch, local_rank: int = 0, output_dir: Path | None = None
    ) -> dict[str, str]:
        labels = {
            LABEL_JOB: launch.job_id,
            LABEL_ATTEMPT: str(launch.attempt),
            LABEL_EXECUTOR: self.executor_id,
            LABEL_RANK: str(launch.gang.ranks[local_rank] if launch.gang else 0),
            LABEL_STARTED: f"{time.time():.3f}",
            LABEL_GRACE: f"{launch.grace_s:g}",
            LABEL_WORKDIR: str(launch.workdir.resolve()),
        }
        if launch.gang is not None:
            labels[LABEL_GANG] = "1"
        if launch.timeout_s is not None:
            labels[LABEL_TIMEOUT] = f"{launch.timeout_s:g}"
        if output_dir is not None:
            labels[LABEL_OUTPUT_DIR] = os.path.abspath(output_dir)  # the job's: never resolved
        return labels

    def container_env(
        self, launch: AttemptLaunch, workdir: str, local_rank: int = 0, output_dir: str = WORK_MOUNT
    ) -> dict[str, str]:
        env = {k: v for k, v in launch.env.items() if not (k in HOST_ONLY_ENV and k in launch.inherited_env)}
        env["TRAINYARD_OUTPUT_DIR"] = output_dir
        env["TRAINYARD_WORKDIR"] = workdir
        metrics_env(env, WORK_MOUNT)
        if launch.checkpoint_dir is not None:
            env["TRAINYARD_CHECKPOINT_DIR"] = CHECKPOINTS_MOUNT
        if launch.inputs_dir is not None:
            env["TRAINYARD_INPUTS"] = INPUTS_MOUNT
        if launch.gang is not None:
            env.update(launch.gang.env(local_rank))
            if own_network(launch.gang):
                env["MASTER_ADDR"] = MASTER_ALIAS
        if launch.gpu_devices is not None:  # the scheduler's assignment: this rank's own devices
            env.update(container_devices_env(rank_devices(launch.gpu_devices, launch.gpu, local_rank)))
        return env

    def container_config(
        self,
        launch: AttemptLaunch,
        image: str,
        output_dir: Path,
        source_dir: Path | None,
        local_rank: int = 0,
        master_ip: str | None = None,
    ) -> dict[str, Any]:
        """The keyword arguments of ``containers.create`` for one attempt, or one rank of a gang
        (pure; no engine call).

        argv is the whole command line (it replaces the image's entrypoint, as a Kubernetes
        ``command`` does); without a git source the image's own working dir applies. Every rank
        gets the spec's resources (they are per replica). Only the work dir and the checkpoint
        dir are mounted (see :mod:`.container_dirs`); the container is hardened as
        :mod:`.container_security` says.
        """
        workdir = WORK_MOUNT
        if source_dir is not None:
            workdir = f"{WORK_MOUNT}/{source_dir.relative_to(launch.workdir).as_posix()}"
        outputs = PurePosixPath(WORK_MOUNT, output_dir.relative_to(launch.workdir).as_posix())
        mode = work_mount_mode(self.name)
        # executor-owned paths (the job only ever sees their insides): resolved as given
        volumes = {str(launch.workdir.resolve()): {"bind": WORK_MOUNT, "mode": mode}}
        if launch.checkpoint_dir is not None:
            volumes[str(launch.checkpoint_dir.resolve())] = {"bind": CHECKPOINTS_MOUNT, "mode": mode}
        if launch.inputs_dir is not None:  # the executor's own folder, never a path the job chose
            volumes[str(launch.inputs_dir.resolve())] = {
                "bind": INPUTS_MOUNT,
                "mode": inputs_mount_mode(self.name),
            }
        who = identity(launch.run_as_root, self.user, (os.geteuid(), os.getegid()))
        config: dict[str, Any] = {
            "image": image,
            "entrypoint": launch.argv[:1],
            "command": launch.argv[1:],
            "environment": self.container_env(launch, workdir, local_rank, str(outputs)),
            "labels": self.labels(launch, local_rank, output_dir),
            "name": self.container_name(launch, local_rank),
            "detach": True,
            "stdin_open": False,
            "tty": False,
            "init": self.init,
            "volumes": volumes,
            **hardening(launch.run_as_root, self.pids_limit),
        }
        if who.user is not None:
            config["user"] = who.user
        if own_network(launch.gang):
            config["network"] = network_name(launch.job_id, launch.attempt)
            if local_rank == 0:
                config["hostname"] = MASTER_ALIAS
            elif master_ip is not None:  # rank 0 started first: its address on the network is known
                config["extra_hosts"] = {MASTER_ALIAS: master_ip}
        elif launch.gang is not None:
            # split across executors: the others reach rank 0 at this host's advertised address
            config["network_mode"] = "host"
        if source_dir is not None:
            config["working_dir"] = workdir
        if launch.cpu:
            cpu = launch.cpu
            engine_cpus = self._capacity.cpu if self._capacity is not None else 0
            if engine_cpus:
                cpu = min(cpu, engine_cpus)  # the engine refuses more than it has
            config["nano_cpus"] = int(cpu * 1e9)
        if launch.memory_mb:
            config["mem_limit"] = f"{max(launch.memory_mb, MIN_MEMORY_MB)}m"
        if launch.gpu > 0:
            config["device_requests"] = [gpu_request(launch, local_rank)]
        if self.ulimits:
            config["ulimits"] = [Ulimit(name=n, soft=s, hard=h) for n, s, h in self.ulimits]
        return config

    async def start(
        self, launch: AttemptLaunch, on_line: LineSink
    ) -> ContainerAttempt | GangAttempt | FinishedAttempt:
        output_dir = launch.workdir / launch.output_subdir
        try:
            # checked out on the executor's host, mounted with the work dir
            source_dir = await prepare_source(launch)
            owner = identity(launch.run_as_root, self.user, (os.geteuid(), os.getegid())).owner
            dirs = await in_thread(prepare_dirs, launch, source_dir, owner, name="prepare")
        except (SourceError, WorkdirError, OSError) as exc:
            return FinishedAttempt(f"could not prepare the work dir: {exc}", output_dir)
        output_dir = dirs.output_dir
        image = launch.image or self.default_image
        if not image:
            return FinishedAttempt(
                f"no image: the job spec names none and this {self.name} executor has no default image",
                output_dir,
            )
        if launch.runtime_pip:
            return FinishedAttempt(
                f"runtime_env.pip is not supported by the {self.name} backend: "
                "install the packages in the image",
                output_dir,
            )
        if self._capacity is None:
            await in_thread(self.capacity, name="docker-info")
        if launch.gang is not None and not launch.gang.ranks:
            return FinishedAttempt("a gang without ranks", output_dir)
        return await self._start_containers(launch, image, output_dir, source_dir, on_line)

    async def _start_containers(
        self, launch: AttemptLaunch, image: str, output_dir: Path, source_dir: Path | None, on_line: LineSink
    ) -> ContainerAttempt | GangAttempt | FinishedAttempt:
        """One container, or one per rank on the gang's own network (made first, removed again when
        the gang does not start whole)."""
        network = network_name(launch.job_id, launch.attempt) if own_network(launch.gang) else None
        members: list[ContainerAttempt] = []
        master_ip: str | None = None
        made_network = False  # (one by its name that is not this attempt's is never removed)
        try:
            if network is not None:
                labels = {k: v for k, v in self.labels(launch).items() if k in NETWORK_LABELS}
                await in_thread(
                    self.starts.in_slot,
                    "network create",
                    lambda: self.client,
                    lambda client: create_network(client, network, labels),
                    name="network",
                )
                made_network = True
            for local_rank in range(len(launch.gang.ranks) if launch.gang else 1):
                config = self.container_config(launch, image, output_dir, source_dir, local_rank, master_ip)
                container = await in_thread(self._create_and_start, config, name=f"start-{launch.job_id}")
                if network is not None and local_rank == 0:
                    master_ip = master_address(container, network)
                rank = launch.gang.ranks[local_rank] if launch.gang else None
                members.append(ContainerAttempt(self, container, launch, output_dir, on_line, rank=rank))
        except (ImageNotFound, AlreadyRunning, DockerException, RuntimeError, OSError) as exc:
            # a gang starts whole or not at all
            await asyncio.gather(*(self._remove(m.container_id) for m in members))
            for m in members:
                await m.detach()
            if network is not None and made_network:
                await self.drop_network(network)
            if isinstance(exc, ImageNotFound):
                return FinishedAttempt(image_missing_reason(image), output_dir)
            if isinstance(exc, AlreadyRunning):
                return FinishedAttempt(str(exc), output_dir)
            return FinishedAttempt(f"could not start the container: {engine_error(exc)}", output_dir)
        if launch.gang is None:
            return members[0]
        return GangAttempt(launch, output_dir, members, network)

    def _create_and_start(self, config: Mapping[str, Any]) -> Any:
        owner = {key: config["labels"][key] for key in NETWORK_LABELS}
        return self.starts.create_and_start(lambda: self.client, config, owner)

    async def _remove(self, container_id: str) -> None:
        """Remove a container, in a slot, asked again while the engine fails transiently; one
        already gone is removed. One that still fails is left to the start-up reaper."""

        def remove(client: Any) -> None:
            with contextlib.suppress(NotFound):
                client.api.remove_container(container_id, force=True, v=True)

        try:
            await in_thread(
                self.starts.in_slot, "remove", lambda: self.client, remove, "remove", name="remove"
            )
        except (DockerException, EngineCallFailed, OSError) as exc:
            log.warning("could not remove a container", extra={"container": container_id, "error": str(exc)})

    # -- after a restart ----------------------------------------------------------------------

    async def find_attempts(self) -> list[FoundAttempt]:
        """This executor's containers on the engine (running or ended), one entry per attempt."""
        found = await in_thread(self.list_running, include_stopped=True, name="list")
        attempts: dict[tuple[str, int], list[RunningContainer]] = {}
        for c in found:
            attempts.setdefault((c.job_id, c.attempt), []).append(c)
        return [
            FoundAttempt(
                job_id=job_id,
                attempt=attempt,
                ref=",".join(c.container_id for c in sorted(cs, key=lambda c: c.rank)),
                detail=", ".join(f"{c.container_id[:12]} {c.state}" for c in cs),
            )
            for (job_id, attempt), cs in sorted(attempts.items())
        ]

    async def adopt(self, found: FoundAttempt, on_line: LineSink) -> ContainerAttempt | GangAttempt:
        """Follow the containers of an attempt a previous run of this executor started."""
        containers = [
            await in_thread(self.client.containers.get, cid, name="get") for cid in found.ref.split(",")
        ]
        labels = containers[0].attrs["Config"].get("Labels") or {}
        workdir = Path(labels.get(LABEL_WORKDIR) or ".")
        output_dir = Path(labels.get(LABEL_OUTPUT_DIR) or workdir / "outputs")
        timeout = labels.get(LABEL_TIMEOUT)
        launch = AttemptLaunch(
            job_id=found.job_id,
            attempt=found.attempt,
            argv=[],
            env={},
            workdir=workdir,
            timeout_s=float(timeout) if timeout else None,
            grace_s=float(labels.get(LABEL_GRACE) or 10.0),
        )
        gang = bool(labels.get(LABEL_GANG))
        # (Podman's inspect says "bridge" for NetworkMode: the attached networks tell)
        attached = (containers[0].attrs.get("NetworkSettings") or {}).get("Networks") or {}
        on_own_network = network_name(found.job_id, found.attempt) in attached
        members = []
        for container in containers:
            tags = container.attrs["Config"].get("Labels") or {}
            rank = int(tags.get(LABEL_RANK) or 0)
            try:
                cursor = read_in(workdir, META_DIR, cursor_name(rank if gang else None), limit=4096)
                skip = {str(k): int(v) for k, v in json.loads(cursor).items()}
            except (OSError, ValueError, AttributeError, TypeError):
                skip = {}
            started = tags.get(LABEL_STARTED)
            members.append(
                ContainerAttempt(
                    self,
                    container,
                    launch,
                    output_dir,
                    on_line,
                    rank=rank if gang else None,
                    started_at=float(started) if started else None,
                    skip=skip,
                )
            )
        if not gang:
            return members[0]
        return GangAttempt(
            launch, output_dir, members, network_name(found.job_id, found.attempt) if on_own_network else None
        )

    async def discard(self, found: FoundAttempt, grace_s: float) -> None:
        """Stop and remove the containers of an attempt that is no longer current."""

        async def stop(container_id: str) -> None:
            with contextlib.suppress(NotFound):
                await in_thread(
                    self.client.api.stop, container_id, timeout=max(0, math.ceil(grace_s)), name="stop"
                )
            await self._remove(container_id)

        await asyncio.gather(*(stop(cid) for cid in found.ref.split(",")), return_exceptions=True)
        await self.drop_network(network_name(found.job_id, found.attempt))

    async def drop_network(self, name: str) -> None:
        """Remove a gang's network (best effort: one in use stays until :meth:`reap_orphans`)."""
        with contextlib.suppress(DockerException, EngineCallFailed, OSError):
            await in_thread(
                self.starts.in_slot,
                "network remove",
                lambda: self.client,
                lambda client: remove_network(client, name),
                "remove",
                name="network",
            )

    def list_running(
        self, all_executors: bool = False, include_stopped: bool = False
    ) -> list[RunningContainer]:
        """(job id, attempt, container id) of the attempts running on the engine, from labels.

        Only this executor's unless ``all_executors``; blocking (call it through a thread from
        async code).
        """
        labels = [LABEL_JOB] if all_executors else [f"{LABEL_EXECUTOR}={self.executor_id}"]
        found = []
        for c in self.client.containers.list(all=include_stopped, sparse=True, filters={"label": labels}):
            attrs = c.attrs
            tags = attrs.get("Labels") or {}
            if LABEL_JOB not in tags:
                continue
            state = attrs.get("State")
            found.append(
                RunningContainer(
                    job_id=tags[LABEL_JOB],
                    attempt=int(tags.get(LABEL_ATTEMPT) or 0),
                    container_id=c.id,
                    executor_id=tags.get(LABEL_EXECUTOR, ""),
                    state=state if isinstance(state, str) else str((state or {}).get("Status", "")),
                    rank=int(tags.get(LABEL_RANK) or 0),
                )
            )
        return found

    async def reap_orphans(self, grace_s: float) -> list[RunningContainer]:
        """At start-up nothing runs here yet: every container of this executor is left over.

        Running ones are stopped with the grace period and removed (their attempts are requeued
        by the executor's recovery), so an attempt never runs twice at once; stopped ones are
        removed too unless failed containers are kept for debugging.
        """
        found = await in_thread(self.list_running, include_stopped=True, name="list")
        running = [c for c in found if c.state == "running"]

        async def reap(c: RunningContainer) -> None:
            with contextlib.suppress(NotFound):
                await in_thread(
                    self.client.api.stop, c.container_id, timeout=max(0, math.ceil(grace_s)), name="stop"
                )
            await self._remove(c.container_id)

        victims = running if self.keep_failed else found
        await asyncio.gather(*(reap(c) for c in victims), return_exceptions=True)
        with contextlib.suppress(DockerException):
            await in_thread(prune_networks, self.client, f"{LABEL_EXECUTOR}={self.executor_id}", name="prune")
        return victims


def podman_backend(socket: str = "unix:///run/podman/podman.sock", **kwargs: Any) -> DockerBackend:
    """The docker backend pointed at ``podman system service`` (with Podman's ulimits)."""
    return DockerBackend(base_url=socket, name="podman", **kwargs)
