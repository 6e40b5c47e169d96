"""The executor's use cases: start an attempt, cancel it, finish it, recover after a restart.

Every change to the job record is fenced on (executor, attempt): a stale executor, lost and then
back, can never overwrite a newer attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError

from trainyard_contracts import (
    AttemptRef,
    CancelAttempt,
    Capacity,
    Envelope,
    ExecutorHeartbeat,
    GpuDevice,
    JobCancelled,
    JobRecord,
    JobRequeued,
    JobRunning,
    JobSpec,
    JobState,
    Rendezvous,
    StartAttempt,
    lifecycle,
)
from trainyard_contracts._time import utcnow
from trainyard_contracts.records import PortRange
from trainyard_executor.backends.base import AttemptLaunch, Backend, FoundAttempt, RunningAttempt
from trainyard_executor.backends.devices import attempt_devices
from trainyard_executor.backends.hostpaths import read_in, write_in
from trainyard_executor.gang import (
    conclude_member,
    ended_by_a_member,
    leave_member,
    log_seq_base,
    member_of,
    rendezvous_of,
    start_member,
)
from trainyard_executor.jobenv import job_env, plan_gang
from trainyard_executor.logship import LogShipper
from trainyard_executor.outcomes import conclude, event_for, owns
from trainyard_executor.settings import ExecutorSettings
from trainyard_executor.workdirs import WorkdirCache
from trainyard_shared.blobs import UnpackLimits
from trainyard_shared.events import EventPublisher
from trainyard_shared.executors import ExecutorDirectory
from trainyard_shared.jobstore import JobStore

log = logging.getLogger("trainyard.executor")
T = TypeVar("T")
# what NATS raises while the server restarts or the network blips (nats.errors.Error covers the
# client's own timeouts, no-responders and closed-connection errors)
BROKER_ERRORS = (TimeoutError, NatsError, ConnectionError)


def _ended_here(record: JobRecord, executor_id: str, attempt: int) -> bool:
    """The record shows ``attempt`` ended, on ``executor_id``, in a terminal state."""
    return record.attempt == attempt and record.state.terminal and record.runs_on(executor_id)


def _requeued_here(found: JobRecord, written: JobRecord, attempt: int) -> bool:
    """The record shows ``attempt`` requeued for a retry by ``written``, the very write this
    executor made: the attempt's history entry (its end time, state, exit code and reason) is the
    one that write put there, and only a requeue of the attempt moves the record past it. A requeue
    by anyone else (the scheduler: executor lost, preempted) wrote its own time and reason there."""
    if written.state != JobState.REQUEUED or written.attempt != attempt + 1 or found.attempt <= attempt:
        return False
    mine = next((info for info in written.attempts if info.number == attempt), None)
    there = next((info for info in found.attempts if info.number == attempt), None)
    return (
        mine is not None
        and there is not None
        and there.state == JobState.REQUEUED
        and there.model_dump() == mine.model_dump()
    )


ShipperFactory = Callable[[str, int], LogShipper]

SHUTDOWN_HANDBACK_SECONDS = 5.0
"""At shutdown, how long past the jobs' grace the executor waits for its attempts to be killed,
their last log lines stored and each handed back, before it exits anyway."""

LAUNCHED_REMEMBERED = 100_000  # attempts this process launched: a half-done start is told apart by it

LOG_SEQ_PER_GENERATION = 1_000_000
"""An adopted attempt's log chunks continue at ``generation * this``: the message ids of the
chunks a previous run of the executor shipped (``job:attempt:log:seq``) are never reused, so the
stream's deduplication cannot drop new output, and seq still orders the chunks."""


def free_loopback_port() -> int:
    """A TCP port free on loopback right now, for a gang's rendezvous on this machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalAttempt:
    job_id: str
    attempt: int
    handle: RunningAttempt | None = None
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None
    shutting_down: bool = False
    # set when the attempt is over here: the gang watch ends on it even if its cancel is lost
    # (Python 3.11's wait_for, inside nats-py's watch, can drop a cancel that lands as an update
    # arrives; the heartbeat loop had that hang in CI)
    over: bool = False
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


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
        checkpoint_root: Path | None = None,
        free_port: Callable[[], int] = free_loopback_port,
        gpus: list[GpuDevice] | None = None,
        workdirs: WorkdirCache | None = None,
    ) -> None:
        self.store = store
        self.workdirs = workdirs
        # the devices the scheduler may hand out here (gpus.advertised_gpus); None: the backend
        # does not discover any, its count is the setting or what it detects
        self.gpus = gpus
        self.events = events
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
        # commands wait for recover(): an attempt is adopted or stopped before any start or
        # cancel about the same job is handled
        self.recovered = asyncio.Event()
        self._ports = PortRange(first=settings.rendezvous_port_first, last=settings.rendezvous_port_last)
        # what a job may inherit, read from the executor's environment once: per attempt, a
        # look-up of each allowed name in os.environ was ~5 % of the executor's CPU under load
        self.inherited = {k: os.environ[k] for k in settings.passthrough_env if k in os.environ}

    def workdir(self, job_id: str, attempt: int) -> Path:
        return self.work_root / job_id / f"attempt-{attempt}"

    def checkpoint_dir(self, job_id: str) -> Path:
        """TRAINYARD_CHECKPOINT_DIR: one per job, kept across its attempts (a resumed attempt
        finds what the one before saved), removed when the job ends."""
        return self.checkpoint_root / job_id

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
        )

    async def beat(self) -> None:
        await self.directory.put(self.heartbeat())

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
            self.store.remember(cmd.record, cmd.record_revision)  # the CAS tries it: no read first
        now = self.clock()
        seen: list[JobRecord] = []

        def to_running(r: JobRecord) -> JobRecord | None:
            seen.append(r)
            if not owns(r, self.me, cmd.attempt):
                return None
            # a member of a split gang starts its ranks once, also after another member started
            member = member_of(r, self.me, cmd.attempt) if r.gang is not None else None
            if member is None and r.state != JobState.SCHEDULED:
                return None
            if member is not None and (member.started_at is not None or member.state is not None):
                return None
            if r.cancel_requested:
                return lifecycle.finish(
                    r, JobState.CANCELLED, now, exit_code=None, reason="cancelled before it ran"
                )
            return lifecycle.start(r, now) if member is None else start_member(r, self.me, now)

        result = await self.store.update(cmd.job_id, to_running)
        if result is None:
            if not seen or not self._half_started(seen[-1], cmd.attempt):
                return  # fenced: not ours any more, or already started
            # our own earlier write made it running, but what follows it never happened (its
            # event could not be published and the command came again): finish that start
            log.warning(
                "finishing a start whose running event was never confirmed", extra={"job_id": cmd.job_id}
            )
            result = (seen[-1], seen[-1])
            announce = True
        else:
            announce = result[0].state == JobState.SCHEDULED  # only the start that made it running
        record = result[1]
        if record.state == JobState.CANCELLED:
            await self.events.emit(
                JobCancelled(job_id=record.job_id, attempt=cmd.attempt, reason=record.reason or "")
            )
            return
        workdir = self.workdir(record.job_id, cmd.attempt)
        if announce:  # the same message id on every try: the stream keeps one
            running = JobRunning(
                job_id=record.job_id, attempt=cmd.attempt, executor_id=self.me, workdir=str(workdir)
            )
            await self._while_the_broker_is_away(lambda: self.events.emit(running), record.job_id)
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

    def _launched(self, job_id: str, attempt: int) -> None:
        """Remember that this process launched (or adopted) the attempt (bounded)."""
        self.launched[(job_id, attempt)] = None
        while len(self.launched) > LAUNCHED_REMEMBERED:
            self.launched.popitem(last=False)

    def _half_started(self, record: JobRecord, attempt: int) -> bool:
        """The record says ``attempt`` runs here, yet this executor never launched it: a start whose
        write landed and whose announcement and launch did not (after the recovery, nothing else
        makes a record running here without launching it)."""
        return (
            record.state == JobState.RUNNING
            and record.attempt == attempt
            and record.executor_id == self.me
            and record.gang is None
            and record.job_id not in self.running
            and (record.job_id, attempt) not in self.launched
        )

    async def _stop_superseded(self, local: LocalAttempt, reason: str) -> None:
        """End an older attempt before a newer one of the same job starts here. One already told
        to stop (a preemption's cancel, with its grace period) keeps its grace to checkpoint."""
        if local.cancel_reason is None:
            local.cancel_reason = reason
            if local.handle is not None:
                await local.handle.cancel(self.settings.grace_seconds)
        if local.task is not None:
            await asyncio.wait({local.task}, timeout=self.settings.grace_seconds + 3600 + 10)

    async def cancel(self, cmd: CancelAttempt) -> None:
        await self.recovered.wait()
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

    async def _run(
        self,
        record: JobRecord,
        attempt: int,
        workdir: Path,
        local: LocalAttempt,
        rendezvous: Rendezvous | None = None,
        gpu_devices: tuple[int, ...] | None = None,
    ) -> None:
        spec = record.spec
        shipper = self.shippers(record.job_id, attempt)
        if record.gang is not None:
            shipper.seq = log_seq_base(record, self.me, attempt)

        async def start() -> None:
            checkpoints = self.checkpoint_dir(record.job_id)
            archive = await self._workdir_archive(spec)
            launch = AttemptLaunch(
                job_id=record.job_id,
                attempt=attempt,
                argv=spec.argv(),
                env=job_env(
                    record,
                    attempt,
                    self.inherited,
                    self.settings.passthrough_env,
                    self.settings.mlflow_tracking_uri,
                    str(Path(sys.executable).parent) if self.settings.python_on_path else None,
                    checkpoint_dir=checkpoints,
                ),
                workdir=workdir,
                timeout_s=spec.timeout,
                source_repo=spec.source.clone_url() if spec.source else None,
                source_commit=spec.source.commit if spec.source else None,
                workdir_archive=archive,
                workdir_limits=UnpackLimits(
                    self.settings.max_workdir_bytes,
                    self.settings.max_workdir_files,
                    self.settings.max_workdir_bytes,
                ),
                runtime_pip=tuple(spec.runtime_env.pip) if spec.runtime_env else (),
                output_subdir=spec.outputs.path if spec.outputs else "outputs",
                grace_s=self.settings.grace_seconds,
                image=spec.image,
                cpu=spec.resources.cpu,
                memory_mb=spec.resources.memory,
                gpu=spec.resources.gpu,
                gpu_devices=gpu_devices,
                inherited_env=tuple(k for k in (*self.settings.passthrough_env, "PATH") if k not in spec.env),
                gang=plan_gang(spec.replicas, rendezvous, self.free_port),
                checkpoint_dir=checkpoints,
                run_as_root=spec.run_as_root,
            )
            ranks = f", ranks {list(launch.gang.ranks)} of {launch.gang.world_size}" if launch.gang else ""
            await shipper.system(f"attempt {attempt} starting on {self.me}{ranks}: {launch.argv}")
            local.handle = await self.backend.start(launch, shipper.line)
            if local.cancel_reason is not None:
                await local.handle.cancel(self.settings.grace_seconds)

        await self._attend(record, attempt, local, shipper, start)

    async def _workdir_archive(self, spec: JobSpec) -> Path | None:
        """The spec's packed workdir fetched to this machine, or None when it names none."""
        if spec.workdir is None or spec.workdir.digest is None:
            return None
        if self.workdirs is None:
            raise RuntimeError("this executor has no access to the workdirs bucket")
        return await self.workdirs.fetch(spec.workdir.digest)

    async def _attend(
        self,
        record: JobRecord,
        attempt: int,
        local: LocalAttempt,
        shipper: LogShipper,
        start: Callable[[], Awaitable[None]],
    ) -> None:
        """Start (or adopt) an attempt, follow it to its end and record it; an attempt that could
        not start is recorded as such, one that ran is never turned into "could not run".
        A member of a split gang also watches the record, to stop its ranks when the attempt ends
        elsewhere."""
        watch: asyncio.Task[None] | None = None
        try:
            await start()
            if record.gang is not None and member_of(record, self.me, attempt) is not None:
                watch = asyncio.create_task(
                    self._watch_gang(record.job_id, attempt, local), name=f"gang-watch-{record.job_id}"
                )
            await self._follow(record, attempt, local, shipper)
        except asyncio.CancelledError:
            raise
        except BROKER_ERRORS as exc:
            if local.handle is None:
                await self._could_not_run(record, attempt, local, shipper, exc)
            else:  # it ran; only recording its end failed, for longer than broker_outage_seconds
                log.error(
                    "the attempt's outcome could not be recorded: NATS stayed away",
                    extra={"job_id": record.job_id, "attempt": attempt, "error": type(exc).__name__},
                )
        except Exception as exc:
            await self._could_not_run(record, attempt, local, shipper, exc)
        finally:
            local.over = True
            if watch is not None:
                watch.cancel()
                # bounded: a lost cancel ends the watch at its next update or check instead
                await asyncio.wait({watch}, timeout=self.settings.gang_check_seconds + 5)
            with contextlib.suppress(*BROKER_ERRORS):
                await shipper.close()
            if self.running.get(record.job_id) is local:
                del self.running[record.job_id]

    async def _follow(
        self, record: JobRecord, attempt: int, local: LocalAttempt, shipper: LogShipper
    ) -> None:
        """Wait for the attempt's end, then record it (or hand the job back on shutdown)."""
        assert local.handle is not None
        outcome = await local.handle.wait()
        kind, reason = outcome.kind, outcome.reason
        if kind == "cancelled" and local.cancel_reason:
            reason = local.cancel_reason
        # abspath, not resolve(): no filesystem calls per attempt (the work root is absolute already)
        outputs_uri = Path(os.path.abspath(outcome.output_dir)).as_uri() if outcome.output_dir else None
        # every line is stored before the terminal event announces it; a broker away at this
        # moment must not change how the attempt ended, so shipping is retried, then given up.
        # The lines and the outcome's write go out together; the event waits for both.
        lines_stored = asyncio.ensure_future(
            self._ship_outcome_lines(shipper, f"attempt {attempt} ended: {kind} ({reason})", record.job_id)
        )
        try:
            if local.shutting_down and kind == "cancelled":
                # stopped by the shutdown: handed back. One that ended on its own meanwhile is
                # recorded as it ended, so work that completed is never run again
                await lines_stored
                await self._requeue(record, "executor shut down while the attempt ran")
                after = None
            else:
                after = await self._finish(
                    record.job_id,
                    attempt,
                    kind,
                    outcome.exit_code,
                    reason,
                    outputs_uri,
                    local.elapsed(),
                    lines_stored=lines_stored,
                )
        finally:
            await lines_stored
        if after is not None and after.state.terminal:
            checkpoints = self.checkpoint_dir(record.job_id)
            if checkpoints.exists():  # most jobs never write one: no thread hop for nothing
                await asyncio.to_thread(shutil.rmtree, checkpoints, True)
        await self._release(local)

    async def _could_not_run(
        self, record: JobRecord, attempt: int, local: LocalAttempt, shipper: LogShipper, exc: Exception
    ) -> None:
        log.exception("attempt could not run", extra={"job_id": record.job_id})
        await shipper.system(f"attempt {attempt} could not run: {exc}")
        await shipper.close()
        await self._finish(
            record.job_id, attempt, "failed", None, f"could not run: {exc}", None, local.elapsed()
        )
        await self._release(local)

    async def _watch_gang(self, job_id: str, attempt: int, local: LocalAttempt) -> None:
        """Stop this member's ranks once the gang's attempt has ended elsewhere.

        Watches the job's key (and re-reads it every ``gang_check_seconds`` in case the watch
        stalled). When a member ended the attempt (its ranks failed, timed out or were given up, or
        the job is terminal) the ranks stop at once with this executor's grace. When the scheduler
        requeued it (preempted, executor lost) its cancel command normally arrives first with its
        own grace; if none came, the ranks stop ``gang_check_seconds`` later."""
        check = self.settings.gang_check_seconds
        loop = asyncio.get_running_loop()
        requeued_seen: float | None = None
        while not local.over:
            watcher = None
            try:
                watcher = await self.store.kv.watch(job_id)
                while not local.over:
                    try:
                        entry = await watcher.updates(timeout=check)
                    except NatsTimeoutError:
                        found = await self.store.get(job_id)
                        record = found[0] if found is not None else None
                    else:
                        if entry is None:
                            continue  # the watch's "caught up" marker
                        record = JobRecord.model_validate_json(entry.value) if entry.value else None
                    if record is not None and owns(record, self.me, attempt):
                        continue
                    if record is None or ended_by_a_member(record, attempt, self.me):
                        reason = "the gang's attempt ended on another executor"
                        if record is not None and record.reason:
                            reason += f": {record.reason}"
                        await self._stop_ranks(local, reason)
                        return
                    if requeued_seen is None:
                        requeued_seen = loop.time()
                    elif loop.time() - requeued_seen >= check:
                        await self._stop_ranks(local, "the gang's attempt was requeued; no cancel came")
                        return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker away: watch again after a pause
                log.warning(
                    "watching a split gang's record failed; watching again",
                    extra={"job_id": job_id, "error": type(exc).__name__},
                )
                await asyncio.sleep(min(check, 2.0))
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()

    async def _stop_ranks(self, local: LocalAttempt, reason: str) -> None:
        if local.cancel_reason is None:
            local.cancel_reason = reason
        log.info("stopping a split gang's ranks", extra={"job_id": local.job_id, "reason": reason})
        if local.handle is not None:
            await local.handle.cancel(self.settings.grace_seconds)

    async def _release(self, local: LocalAttempt) -> None:
        """The outcome is recorded: a restart must not find the attempt on the backend again."""
        release = getattr(local.handle, "release", None)
        if release is not None:
            try:
                await release()
            except Exception:
                log.exception("could not release an attempt", extra={"job_id": local.job_id})

    async def _finish(
        self,
        job_id: str,
        attempt: int,
        kind: str,
        exit_code: int | None,
        reason: str,
        outputs_uri: str | None,
        duration: float,
        lines_stored: Awaitable[object] | None = None,
    ) -> JobRecord | None:
        """Record how the attempt ended and announce it; ``lines_stored``: the attempt's last log
        lines on their way, awaited before the event (a reader of the event finds every line)."""
        now = self.clock()
        tried: list[tuple[JobRecord, JobRecord]] = []  # (before, after) of each write we attempted

        async def announce(event: Envelope) -> None:
            if lines_stored is not None:
                await lines_stored
            # the same message id on every try: the stream keeps one
            await self._while_the_broker_is_away(lambda: self.events.emit(event), job_id)

        def change(r: JobRecord) -> JobRecord | None:
            if not owns(r, self.me, attempt):
                return None
            if r.gang is not None and member_of(r, self.me, attempt) is not None:
                after = conclude_member(
                    r, self.me, kind, exit_code=exit_code, reason=reason, outputs_uri=outputs_uri, now=now
                )
            else:
                after = conclude(
                    r, kind, exit_code=exit_code, reason=reason, outputs_uri=outputs_uri, now=now
                )
            tried.append((r, after))
            return after

        result: tuple[JobRecord, JobRecord] | None = await self._while_the_broker_is_away(
            lambda: self.store.update(job_id, change), job_id
        )
        if result is None:
            # our write may have landed and only its ack been lost (NATS restarted in between):
            # the record then already shows this attempt ended here; announce it (same message id
            # as the first try, so the stream keeps one) instead of leaving it without an event
            found = await self._while_the_broker_is_away(lambda: self.store.get(job_id), job_id)
            if found is not None and _ended_here(found[0], self.me, attempt):
                await announce(event_for(found[0], found[0], duration))
                return found[0]
            # the same for a retry: the landed write requeued the attempt (state requeued, attempt
            # + 1), and the requeued event it owes is the one that write would have announced
            landed = None
            if found is not None:
                landed = next((w for w in reversed(tried) if _requeued_here(found[0], w[1], attempt)), None)
            if landed is None:
                log.warning(
                    "attempt ended after it was superseded; not recorded",
                    extra={"job_id": job_id, "attempt": attempt},
                )
                await self._let_go(job_id, attempt)
                return None
            result = landed
        before, after = result
        if after.state == before.state:
            return after  # a member of a split gang recorded its ranks; the others still run
        event = event_for(before, after, duration)
        if before.gang is not None and after.state != JobState.SUCCEEDED and hasattr(event, "executor_id"):
            event = event.model_copy(update={"executor_id": self.me})  # the member that ended it
        await announce(event)
        return after

    async def _let_go(self, job_id: str, attempt: int) -> None:
        """Say in the record that a stopped attempt's process has ended here (its ``stopping``
        mark cleared): the scheduler holds its room until then (scheduler/room.py)."""
        try:
            await self._while_the_broker_is_away(
                lambda: self.store.update(job_id, lambda r: lifecycle.stopped(r, attempt, self.me)), job_id
            )
        except BROKER_ERRORS:
            log.warning(
                "could not record that a stopped attempt ended; the scheduler frees its room later",
                extra={"job_id": job_id, "attempt": attempt},
            )

    async def _ship_outcome_lines(self, shipper: LogShipper, line: str, job_id: str) -> None:
        try:
            await self._while_the_broker_is_away(lambda: shipper.system(line), job_id)
            await self._while_the_broker_is_away(shipper.close, job_id)
        except BROKER_ERRORS:
            log.warning("the attempt's last log lines could not be stored", extra={"job_id": job_id})

    async def _while_the_broker_is_away(self, call: Callable[[], Awaitable[T]], job_id: str) -> T:
        """``call()``, tried again while NATS does not answer (a restart, a network blip), for up
        to ``broker_outage_seconds``: a broker outage delays recording an outcome, never changes it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.broker_outage_seconds
        pause = 0.2
        while True:
            try:
                return await call()
            except BROKER_ERRORS as exc:
                if loop.time() + pause > deadline:
                    raise
                log.warning(
                    "NATS did not answer; trying again", extra={"job_id": job_id, "error": type(exc).__name__}
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    # -- recovery -----------------------------------------------------------------------------

    async def recover(self, records: list[JobRecord]) -> int:
        """After a restart: adopt what still runs on the backend and is current, stop what is not,
        requeue what the records say runs here but does not. Returns how many were requeued."""
        try:
            by_id = {r.job_id: r for r in records}
            finder = getattr(self.backend, "find_attempts", None)
            found: list[FoundAttempt] = await finder() if finder is not None else []
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
                await self._requeue(record, "executor restarted; the attempt's process is gone")
                count += 1
            return count
        finally:
            self.recovered.set()

    async def _adopt(self, record: JobRecord | None, found: FoundAttempt) -> bool:
        """Watch an attempt a previous run of this executor started; False if it cannot be."""
        assert record is not None
        if record.state == JobState.SCHEDULED:  # crashed between spawning and recording it
            now = self.clock()
            moved = await self.store.update(
                record.job_id,
                lambda r: (
                    lifecycle.start(r, now)
                    if owns(r, self.me, found.attempt) and r.state == JobState.SCHEDULED
                    else None
                ),
            )
            if moved is None:
                return False
            record = moved[1]
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

    async def _requeue(self, record: JobRecord, detail: str) -> None:
        now = self.clock()
        attempt = record.attempt
        result = await self.store.update(
            record.job_id,
            lambda r: (
                # a member of a split gang says it gave its ranks up: the others stop theirs
                lifecycle.requeue(
                    leave_member(r, self.me, now, detail) if r.gang is not None else r,
                    now,
                    reason="executor_lost",
                    counts_as_retry=False,
                    detail=detail,
                )
                if owns(r, self.me, attempt)
                else None
            ),
        )
        if result is None:  # superseded meanwhile (preempted, executor lost): it has ended here
            await self._let_go(record.job_id, attempt)
            return
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
