"""The workflow use cases: start a run, follow its jobs, cancel it, look over open runs.

Collaborators come in (the run store, a reader of job records, the intake sender, the event
publisher); the decisions are the pure core's (core.py). Every change of a run is one
compare-and-set of its record; events follow with deterministic message ids.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from trainyard_contracts import IntakeReply, JobRecord, JobSpec, new_job_id
from trainyard_contracts._time import utcnow
from trainyard_contracts.runs import (
    PipelineEnvelope,
    PipelineFinished,
    PipelineRetried,
    PipelineRun,
    PipelineStarted,
    RunState,
    StepEnded,
    StepState,
    StepSubmitted,
)
from trainyard_contracts.stepoutputs import OutputValue
from trainyard_contracts.sweeps import SweepOwner, SweepRecord, SweepSpec
from trainyard_contracts.workflow import MAX_CACHED_INDICES, PipelineSpec, validate_pipeline
from trainyard_shared.tasks import cancel_and_wait
from trainyard_workflow.core import (
    CacheHit,
    CacheMiss,
    Cancel,
    Decision,
    EndRun,
    EndStep,
    Fact,
    JobEnded,
    JobKnown,
    ModelNotYet,
    Submit,
    advance,
    changed_steps,
    evolve_all,
    has_dependents,
    idempotency_key,
    job_spec_for,
    outputs_of_record,
    pending_lookups,
    retried_steps,
    retry,
    step_inputs,
    step_of,
    submitted_under,
    unanswered,
)
from trainyard_workflow.intake import IntakeSender
from trainyard_workflow.step_values import OutputMissing, StepValues, referenced_steps, with_outputs
from trainyard_workflow.stepcache import StepCache, StepCacheStore, cache_key, job_identity
from trainyard_workflow.store import RunNotFound, RunStore
from trainyard_workflow.sweep_step import sweep_facts, sweep_id_for, sweep_outputs

log = logging.getLogger("trainyard.workflow")
JOB_OUTCOMES = ("succeeded", "failed", "timed_out", "cancelled")
STEP_ATTEMPT_LABEL = "trainyard.dev/step-attempt"

ReadJob = Callable[[str], Awaitable[JobRecord | None]]
Emit = Callable[[PipelineEnvelope], Awaitable[Any]]
# several events published in order when it returns; awaiting what it returns checks their acks
EmitMany = Callable[[list[PipelineEnvelope]], Awaitable[Awaitable[Any]]]
StepEvent = TypeVar("StepEvent", StepSubmitted, StepEnded)


class Sweeps(Protocol):
    """What a sweep step needs of the sweeps (sweeps.SweepService)."""

    async def start_owned(
        self, sweep_id: str, spec: SweepSpec, by: str | None, owner: SweepOwner
    ) -> SweepRecord: ...

    async def status(self, sweep_id: str) -> SweepRecord: ...

    async def cancel(self, sweep_id: str, by: str | None = None) -> SweepRecord: ...


@dataclass
class RunTurn:
    """Who moves a run now (``lock``), the facts waiting for the next turn, and how many wait.

    Callers are numbered as they come (``arrived``); ``served`` is the number of the last caller
    whose facts a turn that ended well applied (its run as it left it: ``served_run``)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: list[Fact] = field(default_factory=list)
    callers: int = 0
    arrived: int = 0
    served: int = 0
    served_run: PipelineRun | None = None


class WorkflowService:
    def __init__(
        self,
        runs: RunStore,
        read_job: ReadJob,
        intake: IntakeSender,
        emit: Emit,
        clock: Callable[[], datetime] = utcnow,
        model_wait: timedelta = timedelta(minutes=5),
        cache: StepCacheStore | None = None,
        blob_stored: Callable[[str], Awaitable[bool]] | None = None,
        emit_many: EmitMany | None = None,
    ) -> None:
        self.runs, self.read_job, self.intake, self.emit, self.clock = runs, read_job, intake, emit, clock
        # several events in order, their acks checked together after (None: ``emit`` each in turn)
        self.emit_many = emit_many
        self.model_wait = model_wait
        # cache None: every look misses and nothing is remembered; blob_stored: whether a step's
        # outputs folder is still in the step outputs bucket (a hit hands it on)
        self.step_cache = StepCache(cache, read_job, blob_stored)
        self.sweeps: Sweeps | None = None  # set by the composition root (a sweep step starts one)
        self._turns: dict[str, RunTurn] = {}
        self._background: set[asyncio.Task[Any]] = set()

    async def start(
        self,
        document: Any,
        params: dict[str, Any] | None = None,
        submitted_by: str | None = None,
        no_cache: bool = False,
    ) -> PipelineRun:
        """A new run of the pipeline ``document`` (SpecError names each bad field); ``no_cache``:
        its ``cache: true`` steps run without looking in the step cache."""
        spec = validate_pipeline(document, params)
        return await self.start_spec(new_job_id(), spec, submitted_by, no_cache)

    async def start_spec(
        self, run_id: str, spec: PipelineSpec, submitted_by: str | None = None, no_cache: bool = False
    ) -> PipelineRun:
        """A run of ``spec`` under ``run_id``, once: a run id that exists already (a schedule's
        tick started again after a restart) is that run, moved on, not a second one."""
        run = PipelineRun.start(run_id, spec, submitted_by, no_cache)
        if await self.runs.create_once(run):
            await self.emit(
                PipelineStarted(
                    run_id=run.run_id,
                    pipeline=spec.name,
                    steps=[s.name for s in spec.steps],
                    submitted_by=submitted_by,
                )
            )
        # answered once its first submissions are recorded: sending them (10,000 for an array)
        # goes on after the answer; a restart resends what is recorded and unanswered
        recorded, taken = await self.runs.mutate(
            run.run_id, functools.partial(self._advance, facts=[]), before_write=self._remember_successes
        )
        await self._announce(recorded, taken)
        self._in_background(self.progress(run.run_id))
        return recorded

    def _in_background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # the look-over (reconcile) takes the run up again
            log.warning("moving a run on failed", extra={"error": repr(task.exception())})

    async def stop(self) -> None:
        await asyncio.gather(*(cancel_and_wait(task) for task in list(self._background)))

    async def status(self, run_id: str) -> PipelineRun:
        found = await self.runs.get(run_id)
        if found is None:
            raise RunNotFound(run_id)
        return found[0]

    async def cancel(self, run_id: str, by: str | None = None) -> PipelineRun:
        return await self.progress(run_id, [Cancel(by)])

    async def retry(self, run_id: str, by: str | None = None, seen_attempt: int | None = None) -> PipelineRun:
        """The failed or cancelled run again, from the steps that did not succeed (RetryRefused
        otherwise): one compare-and-set makes the next attempt and records its first submissions;
        the sends go on after the answer, as for a new run."""
        before: list[PipelineRun] = []

        def change(run: PipelineRun) -> tuple[PipelineRun, list[Decision]]:
            before[:] = [run]
            again = retry(run, seen_attempt)
            return (run, []) if again is run else self._advance(again, [])

        recorded, taken = await self.runs.mutate(run_id, change, before_write=self._remember_successes)
        if recorded.attempt > before[0].attempt:
            steps = retried_steps(before[0], recorded)
            await self.emit(PipelineRetried(run_id=run_id, attempt=recorded.attempt, steps=steps, by=by))
            await self._announce(recorded, taken)
            self._in_background(self.progress(run_id))
        return recorded

    async def on_job_ended(self, job_id: str, outcome: str, known: JobRecord | None = None) -> None:
        """A job ended: if it is a step of a run (its labels say which, and it came through the
        bus intake under that step's key), the run moves on. ``known``: its record, read already."""
        record = known if known is not None else await self.read_job(job_id)
        ref = step_of(record.spec.labels) if record is not None else None
        if ref is None or not await self.runs.exists(ref.run_id):
            return
        assert record is not None
        attempt = record.spec.labels.get(STEP_ATTEMPT_LABEL, "1")
        key = idempotency_key(ref.run_id, ref.step, ref.index, int(attempt) if attempt.isdigit() else 1)
        if not submitted_under(record, key):
            # labels are anyone's to write: a team's job labelled as another's step is no step
            log.warning(
                "a job labelled as a pipeline step was not submitted as one", extra={"job_id": job_id}
            )
            return
        # the job's labels name the key it was sent under: its id is known even if the intake's
        # answer was lost with a restart; a job under any other key is not this step's
        facts: list[Fact] = [
            JobKnown(ref.step, ref.index, key, job_id),
            JobEnded(ref.step, ref.index, job_id, outcome, record.outputs_digest),
        ]
        await self.progress(ref.run_id, facts)

    async def reconcile(self) -> int:
        """Look over every open run: resend what the intake has not answered, take what is due."""
        moved = 0
        for run_id in await self.runs.run_ids():
            found = await self.runs.get(run_id)
            if found is not None and found[0].state == RunState.running:
                await self.progress(run_id, await self._sweep_ends(found[0]))
                moved += 1
        return moved

    # -- sweep steps ---------------------------------------------------------------------------

    async def _sweep_ends(self, run: PipelineRun) -> list[Fact]:
        """The ends of the run's sweep steps' sweeps (a crash may have lost their word)."""
        facts: list[Fact] = []
        for spec in run.spec.steps:
            job = run.steps[spec.name].jobs.get(0)
            if spec.sweep is None or self.sweeps is None or job is None or not job.job_id or job.outcome:
                continue
            try:
                facts += sweep_facts(spec.name, job.key, await self.sweeps.status(job.job_id))
            except Exception as exc:
                log.warning("sweep not read", extra={"sweep_id": job.job_id, "error": repr(exc)})
        return facts

    async def on_sweep_ended(self, sweep: SweepRecord) -> None:
        """A sweep that is a step ended: its run moves on (in the background: the sweep may end
        inside the run's own turn, while its step starts it)."""
        owner = sweep.owner
        if owner is None:
            return
        key = idempotency_key(owner.run_id, owner.step, 0, owner.attempt)
        self._in_background(self.progress(owner.run_id, sweep_facts(owner.step, key, sweep)))

    async def sweep_wanted(self, sweep: SweepRecord) -> bool:
        """Whether a sweep that is a step is still wanted: its run's step is running under the
        attempt that started it (a cancel of the run whose word to the sweep a crash lost: no)."""
        owner = sweep.owner
        if owner is None:
            return True
        found = await self.runs.get(owner.run_id)
        step = found[0].steps.get(owner.step) if found is not None else None
        return step is not None and step.attempt == owner.attempt and step.state == StepState.running

    async def _start_sweep(self, run: PipelineRun, submit: Submit) -> list[Fact]:
        """A sweep step's "submission": its sweep, started once under an id derived from the
        step's key (taken again, the same sweep)."""
        spec = run.spec.step(submit.step).sweep
        assert spec is not None and self.sweeps is not None
        owner = SweepOwner(run_id=run.run_id, step=submit.step, attempt=run.steps[submit.step].attempt)
        try:
            sweep = await self.sweeps.start_owned(sweep_id_for(submit.key), spec, run.submitted_by, owner)
        except ValueError as exc:  # an invalid sweep (SpecError), or the store's limit of sweeps
            return [EndStep(submit.step, StepState.failed, f"the sweep was refused: {exc}"[:1000])]
        except Exception as exc:  # started again on the next look-over, under the same id
            log.warning("sweep not started", extra={"key": submit.key, "error": repr(exc)})
            return []
        return sweep_facts(submit.step, submit.key, sweep)

    async def progress(self, run_id: str, facts: Iterable[Fact] = ()) -> PipelineRun:
        """Apply ``facts``, take every decision due, announce them, then send the submissions
        recorded and not yet answered (and what their answers make due), until none is left.

        One run moves one caller at a time (``_turn``), and whoever has the turn applies every fact
        waiting for it in one compare-and-set: the outcomes of a wide layer of steps, handled side
        by side, would otherwise each rewrite the run and lose the compare-and-set to one another.
        The turn is the compare-and-set and its announcements only: the sends (an intake round
        trip each) go on after it, so the facts that come meanwhile are not held behind them (a key
        on its way is not sent twice: IntakeSender). A caller whose facts another's turn applied
        returns at once: that turn's caller announces and sends what they made due."""
        run, answering = await self._turn(run_id, list(facts))
        while answering is not None:
            answered = await answering
            if not answered:
                break
            run, answering = await self._turn(run_id, answered)
        return run

    async def _answers(self, run: PipelineRun) -> list[Fact]:
        """Send the submissions ``run`` records and has no answer for (look in the step cache,
        start sweeps); what the answers make known, for the next turn."""
        sends, lookups = unanswered(run), pending_lookups(run)
        if not sends and not lookups:
            return []
        sweeps = [s for s in sends if run.spec.step(s.step).sweep is not None]
        sends = [s for s in sends if run.spec.step(s.step).sweep is None]
        answered: list[Fact] = []
        for step in lookups:
            answered += await self._look_up(run, step)
        for submit in sweeps:
            answered += await self._start_sweep(run, submit)
        jobs = {name: await self._step_job(run, name) for name in dict.fromkeys(s.step for s in sends)}
        answered += [job for job in jobs.values() if isinstance(job, EndStep)]
        sendable = [s for s in sends if isinstance(jobs[s.step], JobSpec)]
        answers = await asyncio.gather(
            *(self._send(run, s, jobs[s.step]) for s in sendable), return_exceptions=True
        )
        for submit, answer in zip(sendable, answers, strict=True):
            if isinstance(answer, BaseException):
                # sent again on the next look-over (reconcile) under the same key
                log.warning("submission not answered", extra={"key": submit.key, "error": repr(answer)})
                continue
            answered += _answer_facts(submit, answer)
        return answered

    async def _turn(
        self, run_id: str, facts: list[Fact]
    ) -> tuple[PipelineRun, asyncio.Task[list[Fact]] | None]:
        """The run with ``facts`` applied and, when this caller's own turn applied them, its
        sends under way (``_answers``; None: another's turn applied them).

        A caller whose turn comes after a turn that began once it had arrived, and ended well,
        returns that turn's run at once: its facts were written by that turn (a wide layer's
        outcomes take one turn, not one each). A turn that fails leaves the facts it took for the
        next.

        The sends start once the turn's announcements are written, before their acks are back (a
        round trip less before a step's job exists); the turn still ends well only once the acks
        are: a missing ack fails it as before (its facts left for the next turn, the sends' answers
        dropped: a key sent again is answered with the same job)."""
        turn = self._turns.setdefault(run_id, RunTurn())
        turn.waiting.extend(facts)
        turn.callers += 1
        turn.arrived += 1
        me = turn.arrived
        try:
            async with turn.lock:
                if turn.served >= me and turn.served_run is not None:
                    return turn.served_run, None
                taken, turn.waiting = turn.waiting, []
                serving = turn.arrived  # every caller so far: their facts are in ``taken``
                try:
                    run, decided = await self.runs.mutate(
                        run_id,
                        functools.partial(self._advance, facts=taken),
                        before_write=self._remember_successes,
                    )
                    # announced in the order of the compare-and-sets, before the next turn's
                    acks = await self._publish(run, decided, taken)
                    answering = asyncio.ensure_future(self._answers(run))
                    try:
                        await acks
                    except BaseException:
                        await cancel_and_wait(answering)
                        raise
                except BaseException:
                    turn.waiting[:0] = taken
                    raise
                turn.served, turn.served_run = serving, run
                return run, answering
        finally:
            turn.callers -= 1
            if not turn.callers:
                del self._turns[run_id]

    def _advance(self, run: PipelineRun, facts: list[Fact]) -> tuple[PipelineRun, list[Decision]]:
        """``facts`` applied and what they make due decided: on the steps they changed and their
        dependents only (the run as stored was advanced when written); without facts (a start, a
        retry, the look-over), on every step."""
        now = self.clock()
        evolved = evolve_all(run, facts, now)
        return advance(evolved, now, touched=changed_steps(run, evolved) if facts else None)

    # -- the step cache (stepcache.py) -----------------------------------------------------------

    async def _look_up(self, run: PipelineRun, step: str) -> list[Fact]:
        """A ``cache: true`` step's look in the step cache, under the key of its job as it would be
        submitted and its inputs: a hit whose jobs' records still say succeeded reuses them, any
        other answer is a miss (a cache that cannot be read too: the step runs). [] when something
        cannot be read now (a record, a model not registered yet): the look-over looks again."""
        job = await self._step_job(run, step)
        if not isinstance(job, JobSpec):
            return [job] if isinstance(job, EndStep) else []
        spec = run.spec.step(step)
        try:
            inputs = {dep: await self._input_of(run, dep) for dep in spec.conditions()}
        except ModelNotYet:
            return []
        except Exception as exc:
            log.warning("inputs not read", extra={"run_id": run.run_id, "step": step, "error": repr(exc)})
            return []
        key = cache_key(owner=run.submitted_by, job=job, array=spec.array, inputs=inputs)
        found = None if run.no_cache else await self.step_cache.look(key)
        return [CacheHit(step, key, found.run_id, found.jobs) if found is not None else CacheMiss(step, key)]

    async def _remember_successes(self, run: PipelineRun, decided: list[Decision]) -> None:
        """The ``cache: true`` steps a turn ends succeeded, remembered before the turn writes the
        run: a run seen ended has its entries, so a run started right after it hits."""
        for decision in decided:
            if isinstance(decision, EndStep) and decision.state == StepState.succeeded:
                await self.step_cache.remember(run, decision.step)

    async def _input_of(self, run: PipelineRun, dep: str) -> dict[str, Any]:
        """A dependency as it goes into a dependent's cache key: its state, and for one that
        succeeded what each of its jobs hands on (an array over MAX_CACHED_INDICES: its job ids,
        so a dependent hits only when that array was itself reused)."""
        step = run.steps[dep]
        if step.state != StepState.succeeded:
            return {"state": step.state.value}
        if not run.spec.step(dep).array:
            return {"state": "succeeded", "jobs": [job_identity(await self._outputs_of(run, dep))]}
        if len(step.jobs) > MAX_CACHED_INDICES:
            return {"state": "succeeded", "job_ids": [job.job_id for _, job in sorted(step.jobs.items())]}
        per_index = await self._outputs_per_index(run, dep)
        return {"state": "succeeded", "jobs": [job_identity(per_index[i]) for i in sorted(per_index)]}

    async def _step_job(self, run: PipelineRun, step: str) -> JobSpec | EndStep | None:
        """The step's job with the outputs it uses filled in; EndStep (failed) when one is not
        there; None when a job record could not be read now (the look-over tries again). It
        carries its dependencies' outputs folders (``inputs``) and, when later steps depend on it,
        ``pass_outputs``."""
        inputs = step_inputs(run, step)
        if isinstance(inputs, EndStep):
            return inputs
        job = await self._with_outputs(run, step)
        if not isinstance(job, JobSpec):
            return job
        return job.model_copy(update={"inputs": inputs, "pass_outputs": has_dependents(run, step)})

    async def _with_outputs(self, run: PipelineRun, step: str) -> JobSpec | EndStep | None:
        spec = run.spec.step(step)
        needed = referenced_steps(spec)
        if not needed:
            return spec.job
        arrays = frozenset(name for name in needed if run.spec.step(name).array)
        try:
            outputs: dict[str, StepValues] = {
                name: await (self._outputs_per_index if name in arrays else self._outputs_of)(run, name)
                for name in needed
            }
        except ModelNotYet:
            return None  # its model_registered event moves the run on (or the look-over)
        except Exception as exc:
            log.warning("outputs not read", extra={"run_id": run.run_id, "step": step, "error": repr(exc)})
            return None
        assert spec.job is not None  # a sweep step is started, not submitted (_start_sweep)
        try:
            return with_outputs(spec.job, outputs, arrays)
        except OutputMissing as missing:
            return EndStep(step, StepState.failed, str(missing))

    async def _outputs_of(self, run: PipelineRun, step: str) -> dict[str, OutputValue] | None:
        """What the (single) job of ``step`` reported, from its job record (core.outputs_of_record);
        a sweep step's, from its sweep and its best trial's job record (sweep_step.sweep_outputs)."""
        job = run.steps[step].jobs.get(0)
        if run.spec.step(step).sweep is not None and self.sweeps is not None:
            if job is None or not job.job_id:
                return None
            sweep = await self.sweeps.status(job.job_id)
            best = sweep.best_trial()
            best_job = await self.read_job(best.job_id) if best is not None and best.job_id else None
            return sweep_outputs(sweep, best_job, self.clock(), self.model_wait)
        record = await self.read_job(job.job_id) if job is not None and job.job_id else None
        return outputs_of_record(record, self.clock(), self.model_wait) if record is not None else None

    async def _outputs_per_index(
        self, run: PipelineRun, step: str
    ) -> dict[int, dict[str, OutputValue] | None]:
        """What each job of an array step reported, by index (core.outputs_of_record)."""
        jobs = sorted(run.steps[step].jobs.items())
        records = await asyncio.gather(*(self.read_job(job.job_id or "") for _, job in jobs))
        now = self.clock()
        return {
            index: outputs_of_record(record, now, self.model_wait) if record is not None else None
            for (index, _), record in zip(jobs, records, strict=True)
        }

    async def on_model_registered(self, record: JobRecord | None) -> None:
        """A step's job got its model version: the steps waiting for it may go now."""
        ref = step_of(record.spec.labels) if record is not None else None
        if ref is not None and await self.runs.exists(ref.run_id):
            await self.progress(ref.run_id)

    async def _send(self, run: PipelineRun, submit: Submit, job: JobSpec | EndStep | None) -> IntakeReply:
        assert isinstance(job, JobSpec)
        return await self.intake.submit(job_spec_for(run, submit.step, submit.index, job), submit.key)

    async def _announce(self, run: PipelineRun, taken: list[Decision], facts: Iterable[Fact] = ()) -> None:
        await (await self._publish(run, taken, facts))

    async def _publish(
        self, run: PipelineRun, taken: list[Decision], facts: Iterable[Fact] = ()
    ) -> Awaitable[Any]:
        """The events of a turn: what its ``facts`` made known, then what it decided, in that
        order, published together; awaiting what this returns checks their acks together (one
        round trip, not one each)."""
        events = [*await self._known_events(run, facts), *await self._decided_events(run, taken)]
        if self.emit_many is not None:
            return await self.emit_many(events)
        for event in events:
            await self.emit(event)
        return asyncio.sleep(0)

    async def _known_events(self, run: PipelineRun, facts: Iterable[Fact]) -> list[PipelineEnvelope]:
        events: list[PipelineEnvelope] = []
        for fact in facts:
            if isinstance(fact, EndStep) and fact.step in run.steps:
                # a step failed before its submission (an output it uses is not there)
                step = run.steps[fact.step]
                if step.state == fact.state and step.reason == fact.reason:
                    events.append(await self._step_ended(run, fact))
                continue
            if not isinstance(fact, JobKnown) or fact.step not in run.steps:
                continue
            job = run.steps[fact.step].jobs.get(fact.index)
            if job is not None and job.job_id == fact.job_id:
                # a deterministic message id: the stream keeps one however often it is announced
                events.append(
                    _step_event(run, fact.step, StepSubmitted, index=fact.index, job_id=fact.job_id)
                )
        return events

    async def _decided_events(self, run: PipelineRun, taken: list[Decision]) -> list[PipelineEnvelope]:
        events: list[PipelineEnvelope] = []
        for decision in taken:
            if isinstance(decision, EndStep):
                events.append(await self._step_ended(run, decision))
            elif isinstance(decision, EndRun):
                events.append(PipelineFinished(run_id=run.run_id, state=decision.state, attempt=run.attempt))
        return events

    async def _step_ended(self, run: PipelineRun, end: EndStep) -> StepEnded:
        await self._stop_sweep(run, end)
        step = run.steps[end.step]
        hit = step.cache.from_run if step.cache is not None and step.cache.state == "hit" else None
        return _step_event(run, end.step, StepEnded, state=end.state, reason=end.reason, cached_from=hit)

    async def _stop_sweep(self, run: PipelineRun, end: EndStep) -> None:
        """A sweep step ended before its sweep (the run cancelled): the sweep is cancelled, and
        its trials' jobs with it. Lost in a crash, the sweeps' look-over asks sweep_wanted."""
        job = run.steps[end.step].jobs.get(0)
        if run.spec.step(end.step).sweep is None or self.sweeps is None or job is None or not job.job_id:
            return
        if job.outcome is None:
            try:
                await self.sweeps.cancel(job.job_id, f"pipeline:{run.run_id}")
            except Exception as exc:
                log.warning("sweep not cancelled", extra={"sweep_id": job.job_id, "error": repr(exc)})


def _step_event(run: PipelineRun, step: str, event: type[StepEvent], **fields: Any) -> StepEvent:
    """A step's event names its run, the step and the step's attempt as the run holds it now."""
    return event(run_id=run.run_id, step=step, attempt=run.steps[step].attempt, **fields)


def _answer_facts(submit: Submit, answer: IntakeReply) -> list[Fact]:
    known = JobKnown(submit.step, submit.index, submit.key, answer.job_id)
    if answer.accepted:
        return [known]
    # refused at intake (invalid after substitution, a queue it may not use): the step's job failed
    return [known, JobEnded(submit.step, submit.index, answer.job_id, "rejected")]
