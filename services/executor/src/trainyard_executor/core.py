"""The executor's use cases: start an attempt, cancel it, finish it, recover after a restart.

Every change to the job record is fenced on (executor, attempt): a stale executor, lost and then
back, can never overwrite a newer attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from trainyard_contracts import (
    AttemptRef,
    CancelAttempt,
    Capacity,
    ExecutorHeartbeat,
    GpuDevice,
    JobRecord,
    JobState,
    StartAttempt,
    lifecycle,
)
from trainyard_contracts._time import utcnow
from trainyard_contracts.records import PortRange
from trainyard_executor.backends.base import Backend, FoundAttempt
from trainyard_executor.backends.devices import attempt_devices
from trainyard_executor.gang import (
    log_seq_base,
    member_of,
    rendezvous_of,
)
from trainyard_executor.leasewatch import LeaseWatch
from trainyard_executor.outcomes import not_started_here, owns, start_verdict
from trainyard_executor.recording import BROKER_ERRORS
from trainyard_executor.reporting import Reporter
from trainyard_executor.running import AttemptRunner, LocalAttempt, MetricsFactory, ShipperFactory
from trainyard_executor.settings import ExecutorSettings
from trainyard_executor.stepfolders import StepFolders
from trainyard_executor.workdirs import WorkdirCache
from trainyard_shared.executors import ExecutorDirectory
from trainyard_shared.hostpaths import read_in, write_in
from trainyard_shared.jobsecrets import SecretStore
from trainyard_shared.jobstore import JobStore
from trainyard_shared.reports import apply_report

log = logging.getLogger("trainyard.executor")
T = TypeVar("T")


SHUTDOWN_HANDBACK_SECONDS = 5.0
"""At shutdown, how long past the jobs' grace the executor waits for its attempts to be killed,
their last log lines stored and each handed back, before it exits anyway."""

LOG_SEQ_PER_GENERATION = 1_000_000
"""An adopted attempt's log chunks continue at ``generation * this``: the message ids of the
chunks a previous run of the executor shipped (``job:attempt:log:seq``) are never reused, so the
stream's deduplication cannot drop new output, and seq still orders the chunks."""


def free_loopback_port() -> int:
    """A TCP port free on loopback right now, for a gang's rendezvous on this machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ExecutorCore(AttemptRunner):
    def __init__(
        self,
        store: JobStore,
        reports: Reporter,
        directory: ExecutorDirectory,
        backend: Backend,
        shippers: ShipperFactory,
        settings: ExecutorSettings,
        work_root: Path,
        clock: Callable[[], datetime] = utcnow,
        checkpoint_root: Path | None = None,
        free_port: Callable[[], int] = free_loopback_port,
        gpus: list[GpuDevice] | None = None,
        workdirs: WorkdirCache | None = None,
        secrets: SecretStore | None = None,
        metrics: MetricsFactory | None = None,
        step_folders: StepFolders | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.workdirs = workdirs
        self.step_folders = step_folders
        self.secrets = secrets  # a record with secrets_stored holds *** in place of the values
        # what the backend keeps a job from, as configured: said in every heartbeat
        isolation = getattr(backend, "isolation", None)
        self._isolation = isolation() if callable(isolation) else None
        # the devices the scheduler may hand out here (gpus.advertised_gpus); None: the backend
        # does not discover any, its count is the setting or what it detects
        self.gpus = gpus
        self.reports = reports
        self.directory = directory
        self.backend = backend
        self.shippers = shippers
        self.settings = settings
        self.work_root = work_root
        self.clock = clock
        self.me = settings.id
        self.checkpoint_root = checkpoint_root or work_root.parent / "checkpoints"
        self.free_port = free_port
        self.running: dict[str, LocalAttempt] = {}
        self.launched: OrderedDict[tuple[str, int], None] = OrderedDict()  # (job, attempt) run here
        self.started_at = clock()
        self.draining = False  # set at shutdown; the lease says so (see shutdown)
        self.lease = LeaseWatch(settings.lease_seconds)
        # commands wait for recover(): an attempt is adopted or stopped before any start or
        # cancel about the same job is handled
        self.recovered = asyncio.Event()
        self._ports = PortRange(first=settings.rendezvous_port_first, last=settings.rendezvous_port_last)
        # what a job may inherit, read from the executor's environment once: per attempt, a
        # look-up of each allowed name in os.environ was ~5 % of the executor's CPU under load
        self.inherited = {k: os.environ[k] for k in settings.passthrough_env if k in os.environ}

    # -- lease --------------------------------------------------------------------------------

    def capacity(self) -> Capacity:
        detected = self.backend.capacity()
        s = self.settings
        return Capacity(
            cpu=s.cpu if s.cpu is not None else detected.cpu,
            memory=s.memory if s.memory is not None else detected.memory_mb,
            gpu=len(self.gpus) if self.gpus is not None else s.gpu if s.gpu is not None else detected.gpu,
        )

    def heartbeat(self) -> ExecutorHeartbeat:
        return ExecutorHeartbeat(
            draining=self.draining,
            executor_id=self.me,
            backend=self.backend.name,
            pool=self.settings.pool,
            capacity=self.capacity(),
            running=[AttemptRef(job_id=a.job_id, attempt=a.attempt) for a in self.running.values()],
            time=self.clock(),
            started_at=self.started_at,
            lease_seconds=self.settings.lease_seconds,
            advertise_host=self.settings.advertise_host,
            rendezvous_ports=self._ports,
            gpus=self.gpus or [],
            isolation=self._isolation,
        )

    async def beat(self) -> None:
        asked = time.monotonic()
        await self.directory.put(self.heartbeat())
        self.lease.renewed(asked, time.monotonic())

    # -- commands -----------------------------------------------------------------------------

    async def start(self, cmd: StartAttempt) -> None:
        if cmd.executor_id != self.me:
            return
        await self.recovered.wait()
        local = self.running.get(cmd.job_id)
        if local is not None and local.attempt >= cmd.attempt:
            return  # a redelivered start of what already runs here
        if local is not None:
            # an older attempt of this job still runs here: it was superseded, and a job never
            # runs twice at once
            await self._stop_superseded(local, f"superseded by attempt {cmd.attempt}")
        if cmd.record is not None and cmd.record_revision and cmd.record.job_id == cmd.job_id:
            self.store.remember(cmd.record, cmd.record_revision)  # what it knows: no read first
        record = await self._startable(cmd.job_id, cmd.attempt)
        if record is None:
            return  # fenced: not ours any more, or already started
        if not self._half_started(record, cmd.attempt):
            report = self._report(
                "start", cmd.job_id, cmd.attempt, workdir=str(self.workdir(cmd.job_id, cmd.attempt))
            )
            await self.reports.send(report)
            # the scheduler applies it; runs only once the record says so (a timeout: the command
            # is tried again later, and the same report is dropped by the stream as a re-send)
            verdict, record = await self.reports.settle(
                cmd.job_id, start_verdict(self.me, cmd.attempt), self.settings.report_settle_seconds
            )
            if verdict != "run":
                if (
                    verdict == "gone"
                    and record is not None
                    and lifecycle.stopped(record, cmd.attempt, self.me)
                ):
                    await self._let_go(cmd.job_id, cmd.attempt)  # started, then stopped before it ran
                return
        else:
            # our start was applied, but its launch never happened (the command came again after
            # the wait for it ran out): finish that start
            log.warning("finishing a start whose launch never happened", extra={"job_id": cmd.job_id})
        assert record is not None
        workdir = self.workdir(record.job_id, cmd.attempt)
        rendezvous = (
            rendezvous_of(record, self.me, cmd.attempt) if record.gang is not None else None
        ) or cmd.rendezvous
        devices = attempt_devices(
            cmd.gpus or record.gpu_devices(cmd.attempt, self.me), record.spec.resources.gpu, bool(self.gpus)
        )
        attempt = LocalAttempt(job_id=record.job_id, attempt=cmd.attempt)
        if record.cancel_requested:  # asked while its start was half done: it stops at once
            attempt.cancel_reason = "cancelled by request"
        self._launched(record.job_id, cmd.attempt)
        self.running[record.job_id] = attempt
        attempt.task = asyncio.create_task(
            self._run(record, cmd.attempt, workdir, attempt, rendezvous, devices),
            name=f"attempt-{record.job_id}",
        )

    async def _startable(self, job_id: str, attempt: int) -> JobRecord | None:
        """The record, if a start of ``attempt`` here would change it or its start was applied
        and never launched; the copy this executor knows first, the bucket's when that says no."""
        known = self.store.known(job_id)
        for found in (known, None):
            if found is None:
                found = await self.store.get(job_id)
                if found is None:
                    return None
            record = found[0]
            probe = self._report("start", job_id, attempt)
            if apply_report(record, probe) is not None or self._half_started(record, attempt):
                return record
            if known is None:
                return None
        return None

    async def cancel(self, cmd: CancelAttempt) -> None:
        await self.recovered.wait()
        local = self.running.get(cmd.job_id)
        if local is not None and local.attempt == cmd.attempt:
            local.cancel_reason = cmd.reason
            if local.handle is not None:
                await local.handle.cancel(cmd.grace_seconds)
            return
        # not running here: if the record still says it is ours and scheduled, it is cancelled
        # there (the scheduler applies the report, fenced on this executor and attempt)
        found = await self.store.get(cmd.job_id)
        if found is None:
            return
        record = found[0]
        if owns(record, self.me, cmd.attempt) and record.state == JobState.SCHEDULED:
            await self._send(self._report("cancelled", cmd.job_id, cmd.attempt, reason=cmd.reason))

    # -- one attempt --------------------------------------------------------------------------

    # -- recovery -----------------------------------------------------------------------------

    async def recover(self, records: list[JobRecord], found: list[FoundAttempt] | None = None) -> int:
        """After a restart: adopt what still runs on the backend and is current, stop what is not,
        requeue what the records say runs here but does not. Returns how many were requeued.
        ``found``: the backend's attempts, when the caller has listed them already."""
        try:
            by_id = {r.job_id: r for r in records}
            if found is None:
                finder = getattr(self.backend, "find_attempts", None)
                found = await finder() if finder is not None else []
            stale: list[FoundAttempt] = []
            for item in found:
                record = by_id.get(item.job_id)
                current = record is not None and owns(record, self.me, item.attempt)
                if not current or item.job_id in self.running or not await self._adopt(record, item):
                    stale.append(item)
            if stale:
                log.warning(
                    "stopping attempts left from before a restart that are no longer current",
                    extra={"attempts": [f"{f.job_id}/{f.attempt} ({f.detail})" for f in stale]},
                )
                discard = getattr(self.backend, "discard")  # noqa: B009 - found implies it
                await asyncio.gather(*(discard(f, self.settings.grace_seconds) for f in stale))
            # no attempt the scheduler stopped runs here any more (stale ones were just discarded)
            for record in records:
                for info in record.attempts:
                    if info.stopping and info.executor_id == self.me:
                        await self._let_go(record.job_id, info.number)
            count = 0
            for record in records:
                if not record.state.active or not record.runs_on(self.me):
                    continue
                if record.job_id in self.running:
                    continue
                member = member_of(record, self.me, record.attempt) if record.gang is not None else None
                if member is not None and member.state is not None:
                    continue  # its ranks ended and are recorded; the other members decide the rest
                if not_started_here(record, member):
                    # placed here, but never started (a start makes the record running before it
                    # spawns): its start command is still to come (unacked, or placed after this
                    # process's first beat; the scheduler resends it too), so it is not lost
                    continue
                await self._requeue(record, "executor restarted; the attempt's process is gone")
                count += 1
            return count
        finally:
            self.recovered.set()

    async def _adopt(self, record: JobRecord | None, found: FoundAttempt) -> bool:
        """Watch an attempt a previous run of this executor started; False if it cannot be."""
        assert record is not None
        if record.state == JobState.SCHEDULED:  # crashed between spawning and its start applied
            if not owns(record, self.me, found.attempt):
                return False
            await self._send(self._report("start", record.job_id, found.attempt, adopted=True))
            verdict, moved = await self.reports.settle(
                record.job_id,
                start_verdict(self.me, found.attempt, adopted=True),
                self.settings.report_settle_seconds,
            )
            if verdict != "run" or moved is None:
                return False
            record = moved
        local = LocalAttempt(job_id=record.job_id, attempt=found.attempt)
        info = record.current_attempt()
        if info is not None and info.started_at is not None:
            local.started -= max(0.0, (self.clock() - info.started_at).total_seconds())
        if record.cancel_requested:
            local.cancel_reason = "cancelled by request"
        self._launched(record.job_id, found.attempt)
        self.running[record.job_id] = local
        log.warning(
            "adopted an attempt left from before a restart",
            extra={"job_id": record.job_id, "attempt": found.attempt, "detail": found.detail},
        )
        local.task = asyncio.create_task(
            self._run_adopted(record, found, local), name=f"adopted-{record.job_id}"
        )
        return True

    async def _run_adopted(self, record: JobRecord, found: FoundAttempt, local: LocalAttempt) -> None:
        attempt = found.attempt
        shipper = self.shippers(record.job_id, attempt)

        async def start() -> None:
            shipper.seq = self._next_log_generation(record.job_id, attempt) * LOG_SEQ_PER_GENERATION
            if record.gang is not None:
                shipper.seq += log_seq_base(record, self.me, attempt)
            await shipper.system(f"attempt {attempt} adopted by {self.me} after a restart ({found.detail})")
            local.handle = await getattr(self.backend, "adopt")(found, shipper.line)  # noqa: B009
            if local.cancel_reason is not None:
                await local.handle.cancel(self.settings.grace_seconds)

        await self._attend(record, attempt, local, shipper, start)

    def _next_log_generation(self, job_id: str, attempt: int) -> int:
        """1 for the first adoption of an attempt, 2 for the next ... (kept in its work dir)."""
        # a container's work dir is the job's: no link it planted is followed
        workdir = self.workdir(job_id, attempt)
        generation = 1
        with contextlib.suppress(OSError, ValueError):
            generation = int(read_in(workdir, ".trainyard", "log-generation", limit=64)) + 1
        with contextlib.suppress(OSError):
            write_in(workdir, ".trainyard", "log-generation", str(generation).encode())
        return generation

    async def shutdown(self) -> None:
        """Stop every attempt and hand it back to the queue (it doesn't count as a retry).

        The lease says "draining" first: the scheduler gives this executor nothing new from then
        on, so a job handed back is not placed here again while the lease is still there."""
        self.draining = True
        with contextlib.suppress(*BROKER_ERRORS):
            await self.beat()
        await self._hand_back_all()
        await self.directory.remove(self.me)

    async def _hand_back_all(self) -> None:
        """Every attempt is told to stop at once, so their grace periods run side by side and the
        whole shutdown takes one grace (plus ``SHUTDOWN_HANDBACK_SECONDS``), not one per attempt:
        whoever stops the executor (``trainyard up``, systemd, Kubernetes) waits that long and no
        longer. An attempt whose start was under way is stopped too once it shows up."""
        loop = asyncio.get_running_loop()
        grace = self.settings.grace_seconds
        deadline = loop.time() + grace + SHUTDOWN_HANDBACK_SECONDS
        told: set[int] = set()
        while loop.time() < deadline:
            fresh = [a for a in self.running.values() if id(a) not in told]
            if not fresh:
                return
            for local in fresh:
                told.add(id(local))
                local.shutting_down = True
                local.cancel_reason = "executor shutting down"
            stops = [
                asyncio.ensure_future(local.handle.cancel(grace))
                for local in fresh
                if local.handle is not None
            ]
            ends = [local.task for local in fresh if local.task is not None]
            if stops or ends:
                await asyncio.wait([*stops, *ends], timeout=max(0.0, deadline - loop.time()))
        left = [f"{a.job_id}/{a.attempt}" for a in self.running.values()]
        if left:
            log.error("attempts not handed back before the shutdown deadline", extra={"attempts": left})
