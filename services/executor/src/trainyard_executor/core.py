"""The executor's use cases: start an attempt, cancel it, finish it, recover after a restart.

Every change to the job record is fenced on (executor, attempt): a stale executor, lost and then
back, can never overwrite a newer attempt.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from trainyard_contracts import (
    AttemptRef,
    CancelAttempt,
    Capacity,
    ExecutorHeartbeat,
    JobCancelled,
    JobRecord,
    JobRequeued,
    JobRunning,
    JobState,
    StartAttempt,
    lifecycle,
)
from trainyard_contracts._time import utcnow
from trainyard_executor.backends.base import AttemptLaunch, Backend, RunningAttempt
from trainyard_executor.jobenv import job_env
from trainyard_executor.logship import LogShipper
from trainyard_executor.outcomes import conclude, event_for, owns
from trainyard_executor.settings import ExecutorSettings
from trainyard_shared.events import EventPublisher
from trainyard_shared.executors import ExecutorDirectory
from trainyard_shared.jobstore import JobStore

log = logging.getLogger("trainyard.executor")

ShipperFactory = Callable[[str, int], LogShipper]


@dataclass
class LocalAttempt:
    job_id: str
    attempt: int
    handle: RunningAttempt | None = None
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None
    shutting_down: bool = False
    started: float = field(default_factory=time.monotonic)


class ExecutorCore:
    def __init__(
        self,
        store: JobStore,
        events: EventPublisher,
        directory: ExecutorDirectory,
        backend: Backend,
        shippers: ShipperFactory,
        settings: ExecutorSettings,
        work_root: Path,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.events = events
        self.directory = directory
        self.backend = backend
        self.shippers = shippers
        self.settings = settings
        self.work_root = work_root
        self.clock = clock
        self.me = settings.id
        self.running: dict[str, LocalAttempt] = {}
        self.started_at = clock()

    # -- lease --------------------------------------------------------------------------------

    def capacity(self) -> Capacity:
        detected = self.backend.capacity()
        s = self.settings
        return Capacity(
            cpu=s.cpu if s.cpu is not None else detected.cpu,
            memory=s.memory if s.memory is not None else detected.memory_mb,
            gpu=s.gpu if s.gpu is not None else detected.gpu,
        )

    def heartbeat(self) -> ExecutorHeartbeat:
        return ExecutorHeartbeat(
            executor_id=self.me,
            backend=self.backend.name,
            pool=self.settings.pool,
            capacity=self.capacity(),
            running=[AttemptRef(job_id=a.job_id, attempt=a.attempt) for a in self.running.values()],
            time=self.clock(),
            started_at=self.started_at,
            lease_seconds=self.settings.lease_seconds,
        )

    async def beat(self) -> None:
        await self.directory.put(self.heartbeat())

    # -- commands -----------------------------------------------------------------------------

    async def start(self, cmd: StartAttempt) -> None:
        if cmd.executor_id != self.me:
            return
        local = self.running.get(cmd.job_id)
        if local is not None and local.attempt >= cmd.attempt:
            return  # a redelivered start of what already runs here
        now = self.clock()

        def to_running(r: JobRecord) -> JobRecord | None:
            if not (owns(r, self.me, cmd.attempt) and r.state == JobState.SCHEDULED):
                return None
            if r.cancel_requested:
                return lifecycle.finish(
                    r, JobState.CANCELLED, now, exit_code=None, reason="cancelled before it ran"
                )
            return lifecycle.start(r, now)

        result = await self.store.update(cmd.job_id, to_running)
        if result is None:
            return  # fenced: not ours any more, or already started
        _, record = result
        if record.state == JobState.CANCELLED:
            await self.events.emit(
                JobCancelled(job_id=record.job_id, attempt=cmd.attempt, reason=record.reason or "")
            )
            return
        workdir = self.work_root / record.job_id / f"attempt-{cmd.attempt}"
        await self.events.emit(
            JobRunning(job_id=record.job_id, attempt=cmd.attempt, executor_id=self.me, workdir=str(workdir))
        )
        attempt = LocalAttempt(job_id=record.job_id, attempt=cmd.attempt)
        self.running[record.job_id] = attempt
        attempt.task = asyncio.create_task(
            self._run(record, cmd.attempt, workdir, attempt), name=f"attempt-{record.job_id}"
        )

    async def cancel(self, cmd: CancelAttempt) -> None:
        local = self.running.get(cmd.job_id)
        if local is not None and local.attempt == cmd.attempt:
            local.cancel_reason = cmd.reason
            if local.handle is not None:
                await local.handle.cancel(cmd.grace_seconds)
            return
        # not running here: if the record still says it is ours and scheduled, cancel it there
        now = self.clock()
        result = await self.store.update(
            cmd.job_id,
            lambda r: (
                lifecycle.finish(r, JobState.CANCELLED, now, exit_code=None, reason=cmd.reason)
                if owns(r, self.me, cmd.attempt) and r.state == JobState.SCHEDULED
                else None
            ),
        )
        if result is not None:
            await self.events.emit(JobCancelled(job_id=cmd.job_id, attempt=cmd.attempt, reason=cmd.reason))

    # -- one attempt --------------------------------------------------------------------------

    async def _run(self, record: JobRecord, attempt: int, workdir: Path, local: LocalAttempt) -> None:
        spec = record.spec
        shipper = self.shippers(record.job_id, attempt)
        try:
            launch = AttemptLaunch(
                job_id=record.job_id,
                attempt=attempt,
                argv=spec.argv(),
                env=job_env(
                    record,
                    attempt,
                    os.environ,
                    self.settings.passthrough_env,
                    self.settings.mlflow_tracking_uri,
                    str(Path(sys.executable).parent) if self.settings.python_on_path else None,
                ),
                workdir=workdir,
                timeout_s=spec.timeout,
                source_repo=spec.source.repo if spec.source else None,
                source_commit=spec.source.commit if spec.source else None,
                runtime_pip=tuple(spec.runtime_env.pip) if spec.runtime_env else (),
                output_subdir=spec.outputs.path if spec.outputs else "outputs",
                grace_s=self.settings.grace_seconds,
                image=spec.image,
                cpu=spec.resources.cpu,
                memory_mb=spec.resources.memory,
                gpu=spec.resources.gpu,
                inherited_env=tuple(k for k in (*self.settings.passthrough_env, "PATH") if k not in spec.env),
            )
            await shipper.system(f"attempt {attempt} starting on {self.me}: {launch.argv}")
            local.handle = await self.backend.start(launch, shipper.line)
            if local.cancel_reason is not None:
                await local.handle.cancel(self.settings.grace_seconds)
            outcome = await local.handle.wait()
            kind, reason = outcome.kind, outcome.reason
            if kind == "cancelled" and local.cancel_reason:
                reason = local.cancel_reason
            outputs_uri = outcome.output_dir.resolve().as_uri() if outcome.output_dir else None
            await shipper.system(f"attempt {attempt} ended: {kind} ({reason})")
            await shipper.close()  # every line is stored before the terminal event announces it
            if local.shutting_down:
                await self._requeue(record, "executor shut down while the attempt ran")
                return
            await self._finish(
                record.job_id,
                attempt,
                kind,
                outcome.exit_code,
                reason,
                outputs_uri,
                time.monotonic() - local.started,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("attempt could not run", extra={"job_id": record.job_id})
            await shipper.system(f"attempt {attempt} could not run: {exc}")
            await shipper.close()
            await self._finish(
                record.job_id,
                attempt,
                "failed",
                None,
                f"could not run: {exc}",
                None,
                time.monotonic() - local.started,
            )
        finally:
            await shipper.close()
            if self.running.get(record.job_id) is local:
                del self.running[record.job_id]

    async def _finish(
        self,
        job_id: str,
        attempt: int,
        kind: str,
        exit_code: int | None,
        reason: str,
        outputs_uri: str | None,
        duration: float,
    ) -> None:
        now = self.clock()
        result = await self.store.update(
            job_id,
            lambda r: (
                conclude(r, kind, exit_code=exit_code, reason=reason, outputs_uri=outputs_uri, now=now)
                if owns(r, self.me, attempt)
                else None
            ),
        )
        if result is None:
            log.warning(
                "attempt ended after it was superseded; not recorded",
                extra={"job_id": job_id, "attempt": attempt},
            )
            return
        before, after = result
        await self.events.emit(event_for(before, after, duration))

    # -- recovery -----------------------------------------------------------------------------

    async def recover(self, records: list[JobRecord]) -> int:
        """After a restart: attempts the record says run here, but don't, are requeued."""
        count = 0
        for record in records:
            if record.executor_id != self.me or not record.state.active:
                continue
            if record.job_id in self.running:
                continue
            await self._requeue(record, "executor restarted; the attempt's process is gone")
            count += 1
        return count

    async def shutdown(self) -> None:
        """Stop every attempt and hand it back to the queue (it doesn't count as a retry)."""
        attempts = list(self.running.values())
        for local in attempts:
            local.shutting_down = True
            local.cancel_reason = "executor shutting down"
            if local.handle is not None:
                await local.handle.cancel(self.settings.grace_seconds)
        tasks = [a.task for a in attempts if a.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=self.settings.grace_seconds + 10)
        await self.directory.remove(self.me)

    async def _requeue(self, record: JobRecord, detail: str) -> None:
        now = self.clock()
        attempt = record.attempt
        result = await self.store.update(
            record.job_id,
            lambda r: (
                lifecycle.requeue(r, now, reason="executor_lost", counts_as_retry=False, detail=detail)
                if owns(r, self.me, attempt)
                else None
            ),
        )
        if result is not None:
            _, after = result
            await self.events.emit(
                JobRequeued(
                    job_id=record.job_id,
                    attempt=attempt,
                    reason="executor_lost",
                    next_attempt=after.attempt,
                    detail=detail,
                )
            )
