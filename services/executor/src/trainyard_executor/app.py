"""The executor service: its command subject, a heartbeat lease, and the attempts it runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from faststream.asgi import AsgiFastStream

from trainyard_contracts import EXECUTOR_COMMAND_ADAPTER, ExecutorCommand, GpuDevice
from trainyard_executor.attemptstream import AttemptStream
from trainyard_executor.backends.base import Backend, Resources
from trainyard_executor.backends.jobpython import job_python_bin
from trainyard_executor.backends.jobusers import job_users, unreachable
from trainyard_executor.backends.local import LocalBackend
from trainyard_executor.backends.local.forkserver_client import ForkServer
from trainyard_executor.backends.runtime_env import RuntimeEnvCache
from trainyard_executor.core import ExecutorCore
from trainyard_executor.gpus import DISCOVERING_BACKENDS, advertised_gpus, discover_gpus
from trainyard_executor.jobenv import local_mlflow_store
from trainyard_executor.logship import LogShipper
from trainyard_executor.metricship import MetricsShipper
from trainyard_executor.nvml import Nvml
from trainyard_executor.reporting import BusReporter
from trainyard_executor.settings import ExecutorSettings
from trainyard_executor.startupread import records_to_recover
from trainyard_executor.stepfolders import StepFolders, archive_cap
from trainyard_executor.workdirs import WorkdirCache
from trainyard_shared.binding import connect_and_bind
from trainyard_shared.blobs import PackLimits, open_store
from trainyard_shared.broker import make_broker
from trainyard_shared.bus import streams
from trainyard_shared.executors import ExecutorDirectory
from trainyard_shared.jobindex import JobIndex
from trainyard_shared.jobsecrets import SecretStore
from trainyard_shared.jobstore import JobStore
from trainyard_shared.natshandle import NatsHandle
from trainyard_shared.pullconsumer import batch_consumer
from trainyard_shared.runner import build_app
from trainyard_shared.settings import CommonSettings
from trainyard_shared.tracing import setup_tracing

log = logging.getLogger("trainyard.executor")


def make_backend(settings: ExecutorSettings, data: Path) -> Backend:
    """The one backend of this executor (TRAINYARD_EXECUTOR_BACKEND=local|docker|podman|kubernetes|
    kubeflow|noop)."""
    if settings.backend == "noop":
        from trainyard_executor.backends.noop import NoopBackend

        return NoopBackend(
            Resources(cpu=float(settings.cpu or 64), memory_mb=settings.memory or 65536, gpu=0)
        )
    if settings.backend == "local":
        root = data / "executor" / settings.id
        runtime_envs = settings.runtime_env_dir or data / "runtime-envs"
        if settings.python_on_path and settings.python_bin is None and os.geteuid() == 0:
            # the executor's Python out of job users' reach (under /root) and nothing else in the
            # way: a Python they can reach, so that per-job users need not fall back to root
            others = job_needs(
                settings.model_copy(update={"python_on_path": False}), data, root, runtime_envs
            )
            if all(unreachable(p, None, None) is None for p in others):
                settings = settings.model_copy(update={"python_bin": job_python_bin(runtime_envs)})
        users, note, warn = job_users(
            settings.run_as,
            tag=str(root.absolute()),
            uid_base=settings.job_uid_base,
            needs=job_needs(settings, data, root, runtime_envs),
        )
        (log.warning if warn else log.info)(note, extra={"executor_id": settings.id})
        backend = LocalBackend(root=root, runtime_env_cache=RuntimeEnvCache(runtime_envs), job_users=users)
        backend.python_bin = settings.python_bin  # settings_for_jobs hands it to the attempts
        backend.memory_limit = settings.local_memory_limit
        backend.memory_check_seconds = settings.local_memory_check_seconds
        if settings.local_fork_server:
            backend.fork_server = ForkServer()
        return backend
    if settings.backend == "kubernetes":
        from trainyard_executor.backends.kubernetes import kubernetes_backend

        return kubernetes_backend(settings, data)
    if settings.backend == "kubeflow":
        from trainyard_executor.backends.kubeflow import kubeflow_backend

        return kubeflow_backend(settings, data)
    from trainyard_executor.backends.docker import DockerBackend
    from trainyard_executor.backends.engine_calls import EngineCallPolicy

    return DockerBackend(
        base_url=settings.docker_host if settings.backend == "docker" else settings.podman_socket,
        name=settings.backend,
        executor_id=settings.id,
        default_image=settings.default_image,
        keep_failed=settings.keep_failed_containers,
        init=settings.container_init,
        gpus=settings.gpu or 0,
        user=(settings.container_uid, settings.container_gid),
        pids_limit=settings.container_pids_limit,
        engine_calls=EngineCallPolicy(
            concurrency=settings.container_engine_calls,
            call_timeout_s=settings.container_engine_call_timeout_seconds,
            start_deadline_s=settings.container_start_deadline_seconds,
        ),
    )


def job_needs(settings: ExecutorSettings, data: Path, root: Path, runtime_envs: Path) -> list[Path]:
    """The directories a local job must be able to pass through to run: its work and checkpoint
    dirs, the runtime-env cache and, when it gets the executor's Python, that installation."""
    needs = [root / "work", settings.checkpoint_dir or data / "checkpoints", runtime_envs]
    if settings.python_on_path:
        python = (settings.python_bin or Path(sys.executable).parent) / "python"
        needs += [python.parent, Path(os.path.realpath(python)).parent]
        needs += [Path(p) for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}]
    return [Path(os.path.abspath(p)) for p in needs]


def settings_for_jobs(settings: ExecutorSettings, backend: Backend) -> ExecutorSettings:
    """A local MLflow store (``sqlite:///...``, a path) is the stack's file, which jobs that run
    as users of their own may not open, by design: it is not handed to them (a job that needs
    MLflow gets a server's URL, ``TRAINYARD_EXECUTOR_MLFLOW_TRACKING_URI=http://...``)."""
    python_bin = getattr(backend, "python_bin", None)
    if python_bin is not None:
        settings = settings.model_copy(update={"python_bin": python_bin})
    uri = settings.mlflow_tracking_uri
    if getattr(backend, "job_users", None) is None or not uri or not local_mlflow_store(uri):
        return settings
    log.warning(
        "jobs run as users of their own and cannot open the local MLflow store: MLFLOW_TRACKING_URI "
        "is not given to them (set TRAINYARD_EXECUTOR_MLFLOW_TRACKING_URI to an MLflow server)",
        extra={"executor_id": settings.id},
    )
    without_store: ExecutorSettings = settings.model_copy(update={"mlflow_tracking_uri": None})
    return without_store


async def executor_gpus(settings: ExecutorSettings) -> list[GpuDevice] | None:
    """The devices this executor offers (TRAINYARD_EXECUTOR_NVIDIA_SMI, TRAINYARD_EXECUTOR_GPU)."""
    found = (
        await asyncio.to_thread(discover_gpus, settings.nvidia_smi)
        if settings.backend in DISCOVERING_BACKENDS
        else []
    )
    gpus = advertised_gpus(settings.backend, settings.gpu, found)
    if gpus is not None:
        log.info(
            "GPUs offered: %s",
            [f"{g.index}:{g.uuid}" for g in gpus] or "none",
            extra={"executor_id": settings.id},
        )
    return gpus


def describe_isolation(backend: Backend) -> str:
    """What keeps a job's processes together and away from the stack, as the backend says it."""
    describe = getattr(backend, "describe_isolation", None)
    return describe() if callable(describe) else backend.name


@dataclass(frozen=True)
class Runtime:
    """What the executor is made of once connected to NATS: built once, by :meth:`ExecutorService.connect`."""

    core: ExecutorCore
    store: JobStore


class ExecutorService:
    """The executor's composition root: settings and broker from the start, the :class:`Runtime`
    once connected, the heartbeat while online. Its methods are the app's lifecycle hooks."""

    def __init__(self, common: CommonSettings, settings: ExecutorSettings) -> None:
        self.common = common
        self.settings = settings
        self.sb = make_broker(common, "executor", tracer_provider=setup_tracing("executor"))
        self._runtime: Runtime | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeError("the executor is not connected to NATS yet")
        return self._runtime

    async def on_command(self, command: ExecutorCommand) -> None:
        if command.type == "start":
            await self.runtime.core.start(command)
        else:
            await self.runtime.core.cancel(command)

    async def connect(self) -> None:
        common, settings, sb = self.common, self.settings, self.sb
        broker, subjects = sb.broker, sb.subjects
        buckets = await connect_and_bind(sb, common)
        data = common.resolved_data_dir()
        store = JobStore(buckets.jobs)
        reporter = BusReporter(broker, subjects, store)
        await reporter.listen(self.settings.id)
        backend = make_backend(settings, data)
        gpus = await executor_gpus(settings)
        step_pack_limits = PackLimits(settings.max_step_outputs_bytes, settings.max_step_outputs_files)
        nvml = Nvml()  # initialised by the first attempt with devices (none: no GPU figures)
        executor = ExecutorCore(
            store=store,
            reports=reporter,
            directory=ExecutorDirectory(buckets.executors),
            backend=backend,
            shippers=lambda job_id, attempt: LogShipper(
                AttemptStream.of(broker, subjects, "logs", job_id, attempt),
                settings.log_flush_seconds,
                settings.log_batch_lines,
                settings.log_limits(),
            ),
            metrics=(
                lambda job_id, attempt, workdir, note, reader, gpus: MetricsShipper(
                    AttemptStream.of(broker, subjects, "metrics", job_id, attempt),
                    workdir,
                    note,
                    settings.metrics_limits(),
                    settings.metrics_ship_limits(),
                    settings.sampler(reader, nvml.reader(gpus) if gpus else None),
                )
            )
            if settings.metrics_enabled
            else None,
            settings=settings_for_jobs(settings, backend),
            work_root=data / "executor" / settings.id / "work",
            checkpoint_root=settings.checkpoint_dir or data / "checkpoints",
            gpus=gpus,
            workdirs=WorkdirCache(
                lambda: open_store(broker.config.connection_state.stream, subjects.workdirs_bucket),
                data / "executor" / settings.id / "workdirs",
                settings.max_workdir_bytes,
            ),
            secrets=SecretStore(buckets.secrets),
            step_folders=StepFolders(
                lambda: open_store(broker.config.connection_state.stream, subjects.step_outputs_bucket),
                WorkdirCache(
                    lambda: open_store(broker.config.connection_state.stream, subjects.step_outputs_bucket),
                    data / "executor" / settings.id / "step-outputs",
                    archive_cap(step_pack_limits),
                    what="packed outputs folder",
                ),
                step_pack_limits,
                settings.max_step_inputs_bytes,
            ),
        )
        self._runtime = Runtime(core=executor, store=store)

    async def start_executor(self) -> None:
        executor, store = self.runtime.core, self.runtime.store
        # the live jobs from the jobs index (startupread.py), not the history; recover() adopts
        # the attempts left running on the backend that are still current and stops the others
        # a sign of life before the recovery: the scheduler does not requeue this executor's
        # attempts elsewhere while it is back and adopting them (its room is counted from the
        # records meanwhile; commands wait for the recovery)
        await executor.beat()
        finder = getattr(executor.backend, "find_attempts", None)
        found = await finder() if finder is not None else []
        handle = NatsHandle(self.sb.broker)
        records = await records_to_recover(
            store.kv,
            self.settings.id,
            JobIndex(handle.client, handle.jetstream, self.sb.subjects),
            on_backend=[item.job_id for item in found],
        )
        recovered = await executor.recover(records, found)
        if recovered:
            log.warning("requeued attempts left over from before a restart", extra={"count": recovered})
        await executor.beat()
        self._stopping.clear()
        self._heartbeat = asyncio.create_task(self.heartbeat_loop(), name="heartbeat")
        log.info(
            "executor online",
            extra={
                "executor_id": self.settings.id,
                "capacity": executor.capacity().model_dump(),
                "isolation": describe_isolation(executor.backend),
            },
        )

    async def heartbeat_loop(self) -> None:
        # ends on ``stopping``, not only on cancel: Python 3.11's wait_for (inside nats-py's
        # request) returns the answer and drops a cancel that lands as the answer arrives, and
        # "heartbeat failed" handling would then beat on forever (a shutdown hung in CI this way)
        stopping = self._stopping
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.settings.heartbeat_seconds)  # renewal period
            if stopping.is_set():
                return
            try:
                await self.runtime.core.beat()
            except Exception:
                log.exception("heartbeat failed")

    async def stop_executor(self) -> None:
        self._stopping.set()
        task = self._heartbeat
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=10)
        if self._runtime is not None:
            await self._runtime.core.shutdown()
            forks = getattr(self._runtime.core.backend, "fork_server", None)
            if forks is not None:  # it ends now, not a moment after us (trainyard up counts leftovers)
                await forks.close()


def create_app(
    common: CommonSettings | None = None, settings: ExecutorSettings | None = None
) -> AsgiFastStream:
    service = ExecutorService(common or CommonSettings(), settings or ExecutorSettings())
    sb, settings = service.sb, service.settings
    subjects = sb.subjects

    batch_consumer(
        sb,
        subjects.exec_commands_of(settings.id),
        stream=streams(subjects).exec,
        durable=f"executor-{settings.id}",
        parse=EXECUTOR_COMMAND_ADAPTER.validate_json,
        batch=64,
        # attempts start side by side; one job's start and cancel stay in order
        concurrency=32,
        key=lambda command: command.job_id,
        ack_wait=60,
        title="executor/commands",
        description="start and cancel attempts on this executor's backend",
    )(service.on_command)
    app: AsgiFastStream = build_app(
        sb,
        title="trainyard-executor",
        description="Trainyard executor: runs attempts on its backend (local processes)",
        on_startup=[service.connect],
        after_startup=[service.start_executor],
        on_shutdown=[service.stop_executor],
    )
    app.context.set_global("executor", service)  # its Runtime, for tests and diagnostics
    return app
