"""Sweeps: run, status, list, cancel, and what trials' jobs report and how they end.

Collaborators come in (the store, a reader of job records, the intake sender, a canceller, a
reader of a job's last reported batch); the decisions are the pure core's
(``trainyard_workflow.sweep_core``) with Optuna as engine (``sweep_engine``). Exactly once:

- every change of a sweep is one compare-and-set of its record (``NamedStore.mutate``), and a
  handler applies facts that change nothing when they are delivered again;
- a trial is recorded (parameters and idempotency key ``sweep:<id>:<n>``) before its job is sent;
  the intake maps the key to one job for good, so a resend after a restart is the same job;
- the look-over (start-up and every ``reconcile_seconds``) resends what the intake has not
  answered and asks again for the cancels of trials being pruned.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

from trainyard_contracts import IntakeReply, JobRecord, MetricsBatch, new_job_id
from trainyard_contracts._time import utcnow
from trainyard_contracts.spec import ParamValue
from trainyard_contracts.sweeps import (
    PRUNED_REASON,
    SWEEP_LABEL,
    TRIAL_LABEL,
    SweepOwner,
    SweepRecord,
    SweepSpec,
    SweepState,
    TrialState,
    trial_job,
    validate_sweep,
)
from trainyard_workflow.core import submitted_under
from trainyard_workflow.intake import IntakeSender
from trainyard_workflow.named_store import NamedStore, RecordExists, RecordNotFound
from trainyard_workflow.sweep_core import (
    CancelJob,
    CancelSweep,
    Decision,
    Engine,
    Fact,
    JobEnded,
    JobKnown,
    Reported,
    advance,
    trial_key,
    unanswered,
)

log = logging.getLogger("trainyard.workflow.sweeps")

MAX_SWEEPS = 1000
KNOWN_JOBS = 10_000  # jobs remembered as a trial's (or not) for the metrics stream


def _optuna_ask(record: SweepRecord, count: int) -> list[dict[str, ParamValue]]:
    # Optuna and NumPy (~15 MB resident): imported once a sweep asks, not by an idle service
    from trainyard_workflow import sweep_engine

    return sweep_engine.ask(record, count)


def _optuna_should_prune(record: SweepRecord, number: int) -> tuple[bool, dict[str, float]]:
    from trainyard_workflow import sweep_engine

    return sweep_engine.should_prune(record, number)


OPTUNA = Engine(_optuna_ask, _optuna_should_prune)

ReadJob = Callable[[str], Awaitable[JobRecord | None]]
CancelJobs = Callable[[str, int, str, str], Awaitable[None]]  # job id, attempt, by, reason
LastBatch = Callable[[str, int], Awaitable[MetricsBatch | None]]  # a job attempt's last batch
OwnerHook = Callable[[SweepRecord], Awaitable[Any]]  # a sweep that is a pipeline step: its run's side


class SweepStore(NamedStore[SweepRecord]):
    def __init__(self, kv: Any) -> None:
        super().__init__(kv, SweepRecord, lambda record: record.sweep_id, "sweep", MAX_SWEEPS)


def trial_of(record: JobRecord | None) -> tuple[str, int] | None:
    """The (sweep, trial) a job is: its labels name them, and it was submitted through the bus
    intake under that trial's key. Labels alone are anyone's to write: a job a team labelled as
    another's trial is no trial (it cannot end, report for or be pruned as one)."""
    if record is None:
        return None
    labels = record.spec.labels
    sweep_id, number = labels.get(SWEEP_LABEL), labels.get(TRIAL_LABEL, "")
    if not sweep_id or not number.isdigit():
        return None
    if not submitted_under(record, trial_key(sweep_id, int(number))):
        return None
    return sweep_id, int(number)


class SweepService:
    def __init__(
        self,
        store: SweepStore,
        read_job: ReadJob,
        intake: IntakeSender,
        cancel_job: CancelJobs,
        last_batch: LastBatch,
        clock: Callable[[], datetime] = utcnow,
        engine: Engine = OPTUNA,
    ) -> None:
        self.sweeps, self.read_job, self.intake = store, read_job, intake
        self.cancel_job, self.last_batch, self.clock, self.engine = cancel_job, last_batch, clock, engine
        self._trials: OrderedDict[str, tuple[str, int] | None] = OrderedDict()
        # a sweep that is a pipeline step (owner): its end moves its run on; the look-over asks
        # whether its step still wants it (a run's cancel whose word a crash lost)
        self.on_owned_end: OwnerHook | None = None
        self.owner_wants: Callable[[SweepRecord], Awaitable[bool]] | None = None

    @property
    def store(self) -> SweepStore:
        return self.sweeps

    async def create(self, document: Any, by: str | None = None) -> SweepRecord:
        """A new sweep (SpecError names each bad field); answered once its first trials are
        recorded, their jobs sent."""
        spec = validate_sweep(document)
        record = SweepRecord(sweep_id=new_job_id(), spec=spec, created=self.clock(), created_by=by)
        await self.sweeps.create(record)
        return await self.progress(record.sweep_id)

    async def start_owned(
        self, sweep_id: str, spec: SweepSpec, by: str | None, owner: SweepOwner
    ) -> SweepRecord:
        """The sweep a pipeline step starts, under the id its step's key gives: started once,
        however often the step is taken (the existing sweep is answered, moved on)."""
        spec = validate_sweep(spec.model_dump(mode="json"))
        record = SweepRecord(sweep_id=sweep_id, spec=spec, created=self.clock(), created_by=by, owner=owner)
        try:
            await self.sweeps.create(record)
        except RecordExists:
            pass
        return await self.progress(sweep_id)

    async def status(self, sweep_id: str) -> SweepRecord:
        found = await self.sweeps.get(sweep_id)
        if found is None:
            raise RecordNotFound(sweep_id)
        return found[0]

    async def cancel(self, sweep_id: str, by: str | None = None) -> SweepRecord:
        """The sweep ends ``cancelled``; its trials' jobs still open are cancelled."""
        return await self.progress(sweep_id, [CancelSweep(by)], by=by or "sweep")

    # -- what jobs do -----------------------------------------------------------------------------

    async def on_job_ended(self, record: JobRecord | None, outcome: str) -> None:
        """A job ended: if it is a sweep's trial, the trial ends with its objective."""
        ref = trial_of(record)
        if ref is None or record is None:
            return
        sweep_id, number = ref
        found = await self.sweeps.get(sweep_id)
        if found is None or found[0].state != SweepState.running:
            return
        value = None
        if outcome == "succeeded":
            value = await self._objective(found[0], record.job_id, record.attempt)
        facts: list[Fact] = [
            JobKnown(number, record.job_id),
            JobEnded(number, record.job_id, outcome, value, record.reason),
        ]
        await self.progress(sweep_id, facts)

    async def _objective(self, sweep: SweepRecord, job_id: str, attempt: int) -> float | None:
        """The metric's last value in the attempt's last batch (the executor publishes it before
        the job's end); None when that batch has none (the core falls back on the last value the
        metrics stream gave the trial)."""
        batch = await self.last_batch(job_id, attempt)
        metric = sweep.spec.objective.metric
        for point in reversed(batch.points if batch else []):
            if metric in point.values:
                return point.values[metric]
        return None

    async def on_metrics(self, batch: MetricsBatch) -> None:
        """Points a job reported: a running trial's objective values go to the pruner."""
        ref = await self._trial_ref(batch.job_id)
        if ref is None:
            return
        sweep_id, number = ref
        found = await self.sweeps.get(sweep_id)
        if found is None:
            return
        metric = found[0].spec.objective.metric
        points = tuple((p.step, p.values[metric]) for p in batch.points if metric in p.values)
        trial = found[0].trial(number)
        if not points or trial is None or trial.state != TrialState.started:
            return
        await self.progress(sweep_id, [Reported(number, batch.job_id, points)])

    async def _trial_ref(self, job_id: str) -> tuple[str, int] | None:
        if job_id in self._trials:
            self._trials.move_to_end(job_id)
            return self._trials[job_id]
        ref = trial_of(await self.read_job(job_id))
        self._trials[job_id] = ref
        while len(self._trials) > KNOWN_JOBS:
            self._trials.popitem(last=False)
        return ref

    # -- moving a sweep on ------------------------------------------------------------------------

    async def reconcile(self) -> int:
        """Look over every running sweep: resend what the intake has not answered, ask again for
        the cancels of trials being pruned, launch what is due."""
        moved = 0
        for sweep_id in await self.sweeps.names():
            found = await self.sweeps.get(sweep_id)
            if found is None or found[0].state != SweepState.running:
                continue
            try:
                if self.owner_wants is not None and not await self.owner_wants(found[0]):
                    owner = found[0].owner
                    await self.cancel(sweep_id, f"pipeline:{owner.run_id}" if owner else None)
                else:
                    await self.progress(sweep_id, again=True)
            except RecordNotFound:
                continue
            moved += 1
        return moved

    async def progress(
        self, sweep_id: str, facts: Iterable[Fact] = (), by: str = "sweep", again: bool = False
    ) -> SweepRecord:
        """Apply ``facts`` and take every decision due, then do what they say outside the record
        (cancels, submissions) and apply what the intake answers, until nothing is left."""
        facts = list(facts)
        while True:
            change = functools.partial(self._advance, facts=facts)
            record, decisions = await self.sweeps.mutate(sweep_id, change)
            facts = []
            cancels = [d for d in decisions if isinstance(d, CancelJob)]
            if again:  # the look-over: cancels a crash may have lost
                cancels += [
                    CancelJob(t.number, t.job_id, PRUNED_REASON)
                    for t in record.trials
                    if t.state == TrialState.pruning and t.job_id
                ]
                again = False
            for cancel in cancels:
                await self._cancel(sweep_id, cancel, by)
            for number in unanswered(record):
                facts += await self._send(record, number)
            if not facts:
                if record.state != SweepState.running and record.owner and self.on_owned_end:
                    await self.on_owned_end(record)
                return record

    def _advance(self, record: SweepRecord, facts: list[Fact]) -> tuple[SweepRecord, list[Decision]]:
        return advance(record, facts, self.clock(), self.engine)

    async def _cancel(self, sweep_id: str, cancel: CancelJob, by: str) -> None:
        job = await self.read_job(cancel.job_id)
        if job is None or job.state.terminal:
            return
        reason = PRUNED_REASON if cancel.reason.startswith(PRUNED_REASON) else cancel.reason
        who = by if by != "sweep" else f"sweep:{sweep_id}"
        await self.cancel_job(cancel.job_id, job.attempt, who, reason)

    async def _send(self, record: SweepRecord, number: int) -> list[Fact]:
        trial = record.trials[number]
        try:
            spec = trial_job(record.spec, trial.params, record.sweep_id, number, record.owner)
            answer: IntakeReply = await self.intake.submit(spec, trial.key)
        except Exception as exc:  # sent again on the next look-over under the same key
            log.warning("trial not submitted", extra={"key": trial.key, "error": repr(exc)})
            return []
        known = JobKnown(number, answer.job_id)
        if answer.accepted:
            return [known]
        reason = "; ".join(f"{e.field}: {e.message}" for e in answer.errors)[:1000]
        return [known, JobEnded(number, answer.job_id, "rejected", None, reason)]


__all__ = ["SweepService", "SweepStore", "trial_of"]
