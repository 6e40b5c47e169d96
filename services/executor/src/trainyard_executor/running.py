"""One attempt on this executor: launched (or adopted), followed to its end, recorded, released."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from trainyard_contracts import (
    JobRecord,
    JobSpec,
    JobState,
    Rendezvous,
)
from trainyard_contracts.reports import URI_MAX
from trainyard_executor.backends.base import AttemptLaunch, Backend, RunningAttempt
from trainyard_executor.gang import (
    ended_by_a_member,
    log_seq_base,
    member_of,
)
from trainyard_executor.jobenv import job_env, plan_gang
from trainyard_executor.leasewatch import LeaseWatch
from trainyard_executor.logship import LogShipper
from trainyard_executor.metricsfile import ReportSource
from trainyard_executor.metricship import MetricsShipper, Note
from trainyard_executor.outcomes import owns
from trainyard_executor.outputsfile import read_outputs
from trainyard_executor.recording import BROKER_ERRORS, AttemptRecorder
from trainyard_executor.reporting import record_changes
from trainyard_executor.sampling import Reader, with_samples
from trainyard_executor.stepfolders import INPUTS_SUFFIX, StepFolders, StepFoldersError
from trainyard_executor.stepfolders import remove as remove_folder
from trainyard_executor.workdirs import WorkdirCache
from trainyard_shared.jobsecrets import SecretsMissing, SecretStore
from trainyard_shared.tracing import current_traceparent

log = logging.getLogger("trainyard.executor")


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
    metrics: MetricsShipper | None = None  # what the job reports (trainyard.report), to the bus

    def elapsed(self) -> float:
        return time.monotonic() - self.started


class AttemptSuperseded(Exception):
    """The attempt's record moved on (another attempt, another executor) before it spawned."""


LAUNCHED_REMEMBERED = 100_000  # attempts this process launched: a half-done start is told apart by it

ShipperFactory = Callable[[str, int], LogShipper]
# (job id, attempt, work dir, note, usage reader, the attempt's GPU indices here) -> its shipper
MetricsFactory = Callable[
    [str, int, Path | ReportSource, Note, Reader | None, tuple[int, ...]], MetricsShipper
]
"""(job id, attempt, the attempt's work dir on this host or the reports its backend diverts from
its log, where notes for the job's log go, how to read the attempt's resource use: None where the
backend cannot)"""


class AttemptRunner(AttemptRecorder):
    """Runs the attempts the commands start, each to its recorded end. The base of
    :class:`~trainyard_executor.core.ExecutorCore`, which owns the state declared here."""

    backend: Backend
    lease: LeaseWatch  # this executor's renewals as it saw them
    shippers: ShipperFactory
    metrics: MetricsFactory | None  # None: metrics are not read (or the backend shares no work dir)
    work_root: Path
    checkpoint_root: Path
    free_port: Callable[[], int]
    workdirs: WorkdirCache | None
    running: dict[str, LocalAttempt]
    launched: OrderedDict[tuple[str, int], None]
    inherited: dict[str, str]
    secrets: SecretStore | None  # where a job's secret values are kept (None: records hold them)
    step_folders: StepFolders | None  # pipeline steps' outputs folders, packed and unpacked

    def workdir(self, job_id: str, attempt: int) -> Path:
        return self.work_root / job_id / f"attempt-{attempt}"

    def inputs_dir(self, job_id: str, attempt: int) -> Path:
        """$TRAINYARD_INPUTS of an attempt: beside its work dir, not in it (mounted read-only)."""
        return self.work_root / job_id / f"attempt-{attempt}{INPUTS_SUFFIX}"

    def checkpoint_dir(self, job_id: str) -> Path:
        """TRAINYARD_CHECKPOINT_DIR: one per job, kept across its attempts (a resumed attempt
        finds what the one before saved), removed when the job ends."""
        return self.checkpoint_root / job_id

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

    async def _run(
        self,
        record: JobRecord,
        attempt: int,
        workdir: Path,
        local: LocalAttempt,
        rendezvous: Rendezvous | None = None,
        gpu_devices: tuple[int, ...] | None = None,
    ) -> None:
        shipper = self.shippers(record.job_id, attempt)
        if record.gang is not None:
            shipper.seq = log_seq_base(record, self.me, attempt)

        async def start() -> None:
            spec = await self._spec_to_run(record)
            checkpoints = self.checkpoint_dir(record.job_id)
            # a backend that fetches them where the job runs (Kubernetes) is given the digests
            in_pod = getattr(self.backend, "fetches_in_pod", False)
            archive = None if in_pod else await self._workdir_archive(spec)
            inputs = None if in_pod else await self._step_inputs(record.job_id, attempt, spec)
            launch = AttemptLaunch(
                job_id=record.job_id,
                attempt=attempt,
                argv=spec.argv(),
                env=job_env(
                    record.model_copy(update={"spec": spec}),
                    attempt,
                    self.inherited,
                    self.settings.passthrough_env,
                    self.settings.mlflow_tracking_uri,
                    str(self.settings.python_bin or Path(sys.executable).parent)
                    if self.settings.python_on_path
                    else None,
                    checkpoint_dir=checkpoints,
                    inputs_dir=inputs,
                    # the start command's span when the executor traces, else the submission's
                    traceparent=current_traceparent() or record.traceparent,
                ),
                workdir=workdir,
                timeout_s=spec.timeout,
                source_repo=spec.source.clone_url() if spec.source else None,
                source_commit=spec.source.commit if spec.source else None,
                workdir_archive=archive,
                workdir_limits=self.settings.workdir_limits,
                runtime_pip=tuple(spec.runtime_env.pip) if spec.runtime_env else (),
                output_subdir=spec.outputs.path if spec.outputs else "outputs",
                grace_s=self.settings.grace_seconds,
                image=spec.image,
                cpu=spec.resources.cpu,
                memory_mb=spec.resources.memory,
                gpu=spec.resources.gpu,
                gpu_devices=gpu_devices,
                inherited_env=tuple(k for k in (*self.settings.passthrough_env, "PATH") if k not in spec.env),
                secret_env=tuple(spec.secret_env),
                gang=plan_gang(spec.replicas, rendezvous, self.free_port),
                checkpoint_dir=checkpoints,
                run_as_root=spec.run_as_root,
                inputs_dir=inputs,
                workdir_digest=spec.workdir.digest if spec.workdir else None,
                input_digests=tuple((entry.path, entry.digest) for entry in spec.inputs),
                pass_outputs=spec.pass_outputs,
            )
            ranks = f", ranks {list(launch.gang.ranks)} of {launch.gang.world_size}" if launch.gang else ""
            await shipper.system(f"attempt {attempt} starting on {self.me}{ranks}: {launch.argv}")
            await self._still_ours(record.job_id, attempt, local)
            local.handle = await self.backend.start(launch, shipper.line)
            if local.cancel_reason is not None:
                await local.handle.cancel(self.settings.grace_seconds)

        await self._attend(record, attempt, local, shipper, start)

    def _follow_metrics(
        self, record: JobRecord, attempt: int, local: LocalAttempt, shipper: LogShipper
    ) -> None:
        """Read what the job reports while it runs: its metrics file on backends whose work dir is
        on this host, else what the attempt diverts from its log (Kubernetes: ``reports``); and
        sample its resource use where the attempt can be read (Kubernetes: its pods' metrics only)."""
        reader: Reader | None = getattr(local.handle, "read_usage", None)
        diverted: ReportSource | None = getattr(local.handle, "reports", None)
        reads_files = getattr(self.backend, "reads_job_metrics", False)
        if self.metrics is None or not (reads_files or reader is not None or diverted is not None):
            return
        job_id = record.job_id
        # its own devices (the scheduler's assignment), sampled through NVML (nvml.py)
        gpus = tuple(record.gpu_devices(attempt, self.me)) if record.spec.resources.gpu else ()
        source = diverted if diverted is not None else self.workdir(job_id, attempt)
        local.metrics = self.metrics(job_id, attempt, source, shipper.system, reader, gpus)
        local.metrics.start()

    async def _workdir_archive(self, spec: JobSpec) -> Path | None:
        """The spec's packed workdir fetched to this machine, or None when it names none."""
        if spec.workdir is None or spec.workdir.digest is None:
            return None
        if self.workdirs is None:
            raise RuntimeError("this executor has no access to the workdirs bucket")
        return await self.workdirs.fetch(spec.workdir.digest)

    async def _still_ours(self, job_id: str, attempt: int, local: LocalAttempt) -> None:
        """Raise :class:`AttemptSuperseded` when a start that took longer than a heartbeat since
        the record said "running here" finds the attempt given away. A frozen or starved executor
        misses its lease, and the scheduler runs the job elsewhere meanwhile: spawning then would do
        its work twice. A start without such a stall, or with the lease held throughout it
        (leasewatch.py), spawns without a read."""
        if local.elapsed() <= self.settings.heartbeat_seconds or self.lease.held_throughout(local.started):
            return
        found = await self.store.get(job_id)
        if found is None or not owns(found[0], self.me, attempt):
            raise AttemptSuperseded(f"attempt {attempt} was given away while its start was stalled")

    async def _step_inputs(self, job_id: str, attempt: int, spec: JobSpec) -> Path | None:
        """The outputs folders of the step's dependencies unpacked into the attempt's inputs
        folder ($TRAINYARD_INPUTS), or None when the spec names none."""
        if not spec.inputs:
            return None
        if self.step_folders is None:
            raise RuntimeError("this executor has no access to the step outputs bucket")
        return await self.step_folders.prepare(spec.inputs, self.inputs_dir(job_id, attempt))

    async def _pass_outputs(self, record: JobRecord, attempt: int, output_dir: Path) -> str | None:
        """A succeeded step's outputs folder stored for its dependents: its digest; None when the
        spec does not ask (no later step depends on it), the backend keeps the folder elsewhere
        (a cluster backend without an outputs claim this executor mounts: refused at start), or
        this member of a split gang does not run rank 0 (whose outputs are the job's).
        StepFoldersError: the attempt fails with it."""
        backend = self.backend
        readable = getattr(backend, "work_dir_on_host", False) or getattr(backend, "outputs_on_host", False)
        if not record.spec.pass_outputs or not readable:
            return None
        member = member_of(record, self.me, attempt) if record.gang is not None else None
        if member is not None and 0 not in member.ranks:
            return None
        if self.step_folders is None:
            raise StepFoldersError("this executor has no access to the step outputs bucket")
        job_part = record.spec.outputs.path if record.spec.outputs else "outputs"
        return await self.step_folders.share(output_dir, job_part)

    async def _spec_to_run(self, record: JobRecord) -> JobSpec:
        """The spec with its secret values put back (raises SecretsMissing: the attempt fails)."""
        if self.secrets is None:
            if record.secrets_stored:
                raise SecretsMissing(f"job {record.job_id}: secrets stored, and no store here")
            return record.spec
        return await self.secrets.spec_to_run(record)

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
            self._follow_metrics(record, attempt, local, shipper)
            if record.gang is not None and member_of(record, self.me, attempt) is not None:
                watch = asyncio.create_task(
                    self._watch_gang(record.job_id, attempt, local), name=f"gang-watch-{record.job_id}"
                )
            await self._follow(record, attempt, local, shipper)
        except asyncio.CancelledError:
            raise
        except AttemptSuperseded as exc:
            # not ours to record: the scheduler ended it in the record; it only waits to hear that
            # nothing runs here (its room stays counted until then)
            log.warning("a stalled start found its attempt given away", extra={"job_id": record.job_id})
            await shipper.system(f"attempt {attempt} not started: {exc}")
            await self._let_go(record.job_id, attempt)
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
            if local.metrics is not None:
                await local.metrics.stop()
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
        if local.metrics is not None:  # the job's last reports go out before its end is told
            await local.metrics.stop()
        kind, reason = outcome.kind, outcome.reason
        if kind == "cancelled" and local.cancel_reason:
            reason = local.cancel_reason
        # abspath, not resolve(): no filesystem calls per attempt (the work root is absolute already)
        outputs_uri = Path(os.path.abspath(outcome.output_dir)).as_uri() if outcome.output_dir else None
        if outputs_uri is not None and len(outputs_uri) > URI_MAX:
            log.warning(
                "the outputs' path is too long to report; none reported", extra={"job_id": record.job_id}
            )
            outputs_uri = None
        outputs, refused = None, None
        if kind == "succeeded" and outcome.output_dir:
            job_part = record.spec.outputs.path if record.spec.outputs else "outputs"
            outputs, refused = await asyncio.to_thread(read_outputs, Path(outcome.output_dir), job_part)
        outputs_digest = None
        if kind == "succeeded" and outcome.output_dir:
            try:
                outputs_digest = await self._pass_outputs(record, attempt, Path(outcome.output_dir))
            except StepFoldersError as exc:  # the job ran well; its dependents would miss the folder
                kind, reason, outputs = "failed", str(exc), None
        ended = f"attempt {attempt} ended: {kind} ({reason})" + (f"; {refused}" if refused else "")
        # every line is stored before the end is reported (the scheduler announces it); a broker
        # away at this moment must not change how the attempt ended, so shipping is retried, then
        # given up
        lines_stored = asyncio.ensure_future(self._ship_outcome_lines(shipper, ended, record.job_id))
        reported_end = not (local.shutting_down and kind == "cancelled")
        try:
            if not reported_end:
                # stopped by the shutdown: handed back. One that ended on its own meanwhile is
                # reported as it ended, so work that completed is never run again
                await lines_stored
                await self._requeue(record, "executor shut down while the attempt ran")
            else:
                await self._finish(
                    record.job_id,
                    attempt,
                    kind,
                    outcome.exit_code,
                    reason,
                    outputs_uri,
                    local.elapsed(),
                    lines_stored=lines_stored,
                    outputs=outputs,
                    usage=with_samples(outcome.usage, local.metrics.sampler if local.metrics else None),
                    runtime=outcome.runtime,
                    outputs_digest=outputs_digest,
                )
        finally:
            await lines_stored
        await self._release(local)
        # its process has ended (a handed-back one too: a next attempt unpacks its own)
        await asyncio.to_thread(remove_folder, self.inputs_dir(record.job_id, attempt))
        checkpoints = self.checkpoint_dir(record.job_id)
        # most jobs never write one: no wait for the record for nothing. A job that goes on to
        # another attempt (a retry, preempted) keeps them for it
        if reported_end and not local.shutting_down and checkpoints.exists():
            if await self._ended_for_good(record.job_id, attempt):
                await asyncio.to_thread(shutil.rmtree, checkpoints, True)

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
        await asyncio.to_thread(remove_folder, self.inputs_dir(record.job_id, attempt))

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
            try:
                async with contextlib.aclosing(record_changes(self.store, job_id, check)) as changes:
                    async for record in changes:
                        if local.over:
                            return
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
