"""The pure core of a pipeline run: decide what happens next, evolve the record with it. No I/O.

``decide(run)`` looks at a run record and says what is due now: submit the next jobs (every index
of a step whose dependencies are met, up to an array's ``%N`` limit), end a step whose jobs have all
ended, skip a step whose dependencies can no longer be met, end the run when every step has ended.
``evolve(run, decision)`` returns the record with the decision applied; ``advance`` folds the two
until nothing more is due (a skip can make its dependents unmeetable in the same pass).

A submission is recorded before it is sent, under an idempotency key derived from the run, the step,
the array index and the step's attempt (:func:`idempotency_key`): the service sends every recorded
submission the intake has not answered yet, again after a restart, and the intake answers a repeated
key with the job it already made. So a restart never submits a step twice.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from trainyard_contracts import JobRecord, JobSpec
from trainyard_contracts.arrays import parse_array
from trainyard_contracts.ids import WORKFLOW_INTAKE, idempotency_slot
from trainyard_contracts.runs import (
    TERMINAL_STEP_STATES,
    ChildJob,
    PipelineRun,
    RunState,
    StepCache,
    StepRun,
    StepState,
)
from trainyard_contracts.spec import MAX_STEP_INPUTS, ArrayTask, StepInput
from trainyard_contracts.stepoutputs import OutputValue
from trainyard_contracts.workflow import RUN_LABEL, STEP_LABEL, Condition, PipelineSpec, StepSpec

INDEX_LABEL = "trainyard.dev/array-index"
ATTEMPT_LABEL = "trainyard.dev/step-attempt"


@dataclass(frozen=True)
class Submit:
    step: str
    index: int
    key: str


@dataclass(frozen=True)
class EndStep:
    step: str
    state: StepState
    reason: str | None = None


@dataclass(frozen=True)
class EndRun:
    state: RunState


@dataclass(frozen=True)
class JobKnown:
    """The intake answered a submission with its job id."""

    step: str
    index: int
    key: str
    job_id: str


@dataclass(frozen=True)
class JobEnded:
    step: str
    index: int
    job_id: str
    outcome: str
    outputs_digest: str | None = None
    """succeeded: its packed outputs folder, when later steps depend on it (spec pass_outputs)"""


@dataclass(frozen=True)
class Cancel:
    by: str | None = None


@dataclass(frozen=True)
class LookUp:
    """A ``cache: true`` step is due: the service looks in the step cache before anything is
    submitted (docs/workflows.md, Step caching)."""

    step: str


@dataclass(frozen=True)
class CacheHit:
    """The step cache holds a success of this step's rendered spec and inputs: the step's jobs
    are that run's (every one succeeded), nothing is submitted."""

    step: str
    key: str
    from_run: str
    jobs: Mapping[int, ChildJob]


@dataclass(frozen=True)
class CacheMiss:
    """Nothing usable in the step cache (or ``--no-cache``): the step's jobs run, and a success is
    remembered under ``key``."""

    step: str
    key: str


Decision = Submit | EndStep | EndRun | LookUp
Fact = Decision | JobKnown | JobEnded | Cancel | CacheHit | CacheMiss


def idempotency_key(run_id: str, step: str, index: int, attempt: int) -> str:
    return f"workflow:{run_id}:{step}:{index}:{attempt}"


def indices_of(step: StepSpec) -> tuple[int, ...]:
    return parse_array(step.array).indices if step.array else (0,)


def _max_running(step: StepSpec) -> int | None:
    return parse_array(step.array).max_running if step.array else None


def dependency_verdict(condition: Condition, state: StepState) -> bool | None:
    """True: met; False: can no longer be met; None: not yet known (the dependency has not ended).
    ``finished`` is met by any end but a cancel (Slurm's afterany): a skipped step has finished."""
    if state not in TERMINAL_STEP_STATES:
        return None
    if state == StepState.cancelled:
        return False
    if condition == Condition.finished:
        return True
    return str(state) == str(condition)


def decide(run: PipelineRun, only: set[str] | None = None) -> list[Decision]:
    """What is due now on ``run``, in a stable order (the spec's step order). ``only``: the steps
    that may have something due (see :func:`advance`); None: every step."""
    if run.state != RunState.running:
        return []
    if run.cancel_requested:
        return _cancel_decisions(run)
    decisions: list[Decision] = []
    for spec in run.spec.steps:
        if only is None or spec.name in only:
            decisions += _step_decisions(run, spec)
    if not decisions and all(s.state in TERMINAL_STEP_STATES for s in run.steps.values()):
        decisions.append(EndRun(_run_outcome(run)))
    return decisions


def _cancel_decisions(run: PipelineRun) -> list[Decision]:
    out: list[Decision] = [
        EndStep(name, StepState.cancelled, "the run was cancelled")
        for name, step in run.steps.items()
        if step.state not in TERMINAL_STEP_STATES
    ]
    return [*out, EndRun(RunState.cancelled)]


def _step_decisions(run: PipelineRun, spec: StepSpec) -> list[Decision]:
    step = run.steps[spec.name]
    if step.state in TERMINAL_STEP_STATES:
        return []
    verdicts = [dependency_verdict(c, run.steps[d].state) for d, c in spec.conditions().items()]
    if False in verdicts:
        unmet = [
            f"{d} ({run.steps[d].state.value}, needed {c.value})"
            for d, c in spec.conditions().items()
            if dependency_verdict(c, run.steps[d].state) is False
        ]
        return [
            EndStep(spec.name, StepState.skipped, "dependencies can no longer be met: " + ", ".join(unmet))
        ]
    if None in verdicts:
        return []
    if spec.cache and (step.cache is None or step.cache.state == "lookup"):
        # nothing is submitted before the lookup's answer is recorded (a hit submits nothing)
        return [LookUp(spec.name)] if step.cache is None else []
    indices = indices_of(spec)
    if len(step.jobs) == len(indices) and all(job.outcome for job in step.jobs.values()):
        failed = sorted(i for i, job in step.jobs.items() if job.outcome != "succeeded")
        if failed:
            reason = _failure_reason(step, failed, sweep=spec.sweep is not None)
            return [EndStep(spec.name, StepState.failed, reason)]
        return [EndStep(spec.name, StepState.succeeded)]
    return [
        Submit(spec.name, index, idempotency_key(run.run_id, spec.name, index, step.attempt))
        for index in _next_indices(step, indices, _max_running(spec))
    ]


def _failure_reason(step: StepRun, failed: list[int], sweep: bool = False) -> str:
    first = step.jobs[failed[0]]
    if sweep:
        return f"the sweep {first.job_id} {first.outcome} (trainyard sweep status {first.job_id})"
    shown = ", ".join(str(i) for i in failed[:10]) + (" ..." if len(failed) > 10 else "")
    return f"{len(failed)} job(s) did not succeed (index {shown}; job {first.job_id} {first.outcome})"


def _next_indices(step: StepRun, indices: tuple[int, ...], limit: int | None) -> Iterable[int]:
    in_flight = sum(1 for job in step.jobs.values() if job.outcome is None)
    room = len(indices) if limit is None else max(0, limit - in_flight)
    if room == 0:
        return []
    waiting = (i for i in indices if i not in step.jobs)
    out: list[int] = []
    for index in waiting:
        if len(out) >= room:
            break
        out.append(index)
    return out


def _run_outcome(run: PipelineRun) -> RunState:
    """Failed when a step failed that no other step was waiting on to fail (a handled failure, as
    Argo's ``depends: task.Failed``, does not fail the run)."""
    handled = {
        dep
        for spec in run.spec.steps
        for dep, condition in spec.conditions().items()
        if condition in (Condition.failed, Condition.finished)
    }
    unhandled = [n for n, s in run.steps.items() if s.state == StepState.failed and n not in handled]
    return RunState.failed if unhandled else RunState.succeeded


def evolve(run: PipelineRun, fact: Fact, now: datetime | None = None) -> PipelineRun:
    """``run`` with ``fact`` applied; a fact that no longer applies (already applied, stale job
    id, ended step) leaves it as it was, so every handler is idempotent."""
    if isinstance(fact, Cancel):
        if run.state != RunState.running or run.cancel_requested:
            return run
        return run.model_copy(update={"cancel_requested": True})
    if isinstance(fact, EndRun):
        if run.state != RunState.running:
            return run
        return run.model_copy(update={"state": fact.state, "ended": now})
    step = run.steps.get(fact.step)
    if step is None or step.state in TERMINAL_STEP_STATES:
        return run
    changed = _evolve_step(step, fact)
    if changed is step:
        return run
    return run.model_copy(update={"steps": {**run.steps, fact.step: changed}})


def _evolve_step(
    step: StepRun, fact: Submit | EndStep | JobKnown | JobEnded | LookUp | CacheHit | CacheMiss
) -> StepRun:
    if isinstance(fact, EndStep):
        return step.model_copy(update={"state": fact.state, "reason": fact.reason})
    if isinstance(fact, LookUp | CacheHit | CacheMiss):
        return _cache_step(step, fact)
    job = _job_after(step.jobs.get(fact.index), fact)
    if job is None:
        return step
    update: dict[str, object] = {"jobs": {**step.jobs, fact.index: job}}
    if isinstance(fact, Submit):
        update["state"] = StepState.running
    return step.model_copy(update=update)


def _cache_step(step: StepRun, fact: LookUp | CacheHit | CacheMiss) -> StepRun:
    """The step with the cache fact applied: a lookup once, then its one answer (a second
    answer, a redelivered one, changes nothing)."""
    if isinstance(fact, LookUp):
        return (
            step if step.cache is not None else step.model_copy(update={"cache": StepCache(state="lookup")})
        )
    if step.cache is None or step.cache.state != "lookup":
        return step
    if isinstance(fact, CacheMiss):
        return step.model_copy(update={"cache": StepCache(state="miss", key=fact.key)})
    cache = StepCache(state="hit", key=fact.key, from_run=fact.from_run)
    return step.model_copy(update={"cache": cache, "jobs": dict(fact.jobs)})


def _job_after(job: ChildJob | None, fact: Submit | JobKnown | JobEnded) -> ChildJob | None:
    """The child job with ``fact`` applied; None when the fact does not apply (already applied,
    another key or job id: a stale or foreign fact)."""
    if isinstance(fact, Submit):
        return ChildJob(key=fact.key) if job is None else None
    if isinstance(fact, JobKnown):
        if job is None or job.key != fact.key or job.job_id is not None:
            return None
        return job.model_copy(update={"job_id": fact.job_id})
    # JobEnded: only the job this step submitted, once
    if job is None or job.job_id != fact.job_id or job.outcome is not None:
        return None
    digest = fact.outputs_digest if fact.outcome == "succeeded" else None
    return job.model_copy(update={"outcome": fact.outcome, "outputs_digest": digest})


def evolve_all(run: PipelineRun, facts: Iterable[Fact], now: datetime | None = None) -> PipelineRun:
    """``facts`` applied in order, as repeated :func:`evolve`, with each step's jobs copied once
    for a run of facts about jobs (10,000 answers for an array: linear, not quadratic)."""
    jobs: dict[str, dict[int, ChildJob]] = {}
    started: set[str] = set()
    for fact in facts:
        if not isinstance(fact, Submit | JobKnown | JobEnded):
            run = evolve(_with_jobs(run, jobs, started), fact, now)
            jobs, started = {}, set()
            continue
        step = run.steps.get(fact.step)
        if step is None or step.state in TERMINAL_STEP_STATES:
            continue
        own = jobs.setdefault(fact.step, dict(step.jobs))
        job = _job_after(own.get(fact.index), fact)
        if job is not None:
            own[fact.index] = job
            if isinstance(fact, Submit):
                started.add(fact.step)
    return _with_jobs(run, jobs, started)


def _with_jobs(run: PipelineRun, jobs: dict[str, dict[int, ChildJob]], started: set[str]) -> PipelineRun:
    steps = dict(run.steps)
    for name, own in jobs.items():
        update: dict[str, object] = {"jobs": own}
        if name in started:
            update["state"] = StepState.running
        steps[name] = steps[name].model_copy(update=update)
    return run.model_copy(update={"steps": steps}) if jobs else run


def advance(
    run: PipelineRun, now: datetime | None = None, limit: int = 10_000, touched: Iterable[str] | None = None
) -> tuple[PipelineRun, list[Decision]]:
    """Decide and evolve until nothing more is due; returns the record and every decision taken.

    ``touched``: the steps changed since the run was last advanced (nothing was due then). What
    is due on a step depends on it and on its dependencies' states alone, so only those steps and
    their dependents are decided on, and on each pass after, the steps the last one changed and
    theirs (a turn of a 500-step DAG decides on a few dozen, not all 500). None: every step."""
    taken: list[Decision] = []
    due = None if touched is None else _with_dependents(run.spec, touched)
    for _ in range(limit):
        decisions = decide(run, due)
        if not decisions:
            return run, taken
        before, run = run, evolve_all(run, decisions, now)
        taken += decisions
        if due is not None:
            due = _with_dependents(run.spec, changed_steps(before, run))
    raise RuntimeError("a run did not settle: a bug in decide/evolve")


def changed_steps(before: PipelineRun, after: PipelineRun) -> list[str]:
    """The steps ``after`` holds anew (evolve keeps every step it leaves alone as the same object)."""
    return [name for name, step in after.steps.items() if before.steps.get(name) is not step]


# the dependents of each step, by pipeline spec (a spec never changes; the entry holds it, so its id
# is not reused while kept)
_DEPENDENTS: OrderedDict[int, tuple[PipelineSpec, dict[str, list[str]]]] = OrderedDict()
MAX_DEPENDENTS_KEPT = 64


def _with_dependents(spec: PipelineSpec, names: Iterable[str]) -> set[str]:
    kept = _DEPENDENTS.get(id(spec))
    if kept is None or kept[0] is not spec:
        dependents: dict[str, list[str]] = {}
        for step in spec.steps:
            for dep in step.conditions():
                dependents.setdefault(dep, []).append(step.name)
        kept = _DEPENDENTS[id(spec)] = (spec, dependents)
        while len(_DEPENDENTS) > MAX_DEPENDENTS_KEPT:
            _DEPENDENTS.popitem(last=False)
    _DEPENDENTS.move_to_end(id(spec))
    out = set(names)
    for name in list(out):
        out.update(kept[1].get(name, ()))
    return out


class RetryRefused(Exception):
    """A run that cannot be retried now (still running, or it succeeded)."""


def retry(run: PipelineRun, seen_attempt: int | None = None) -> PipelineRun:
    """The run as its next attempt: every step that did not succeed is pending again under its
    next step attempt (so its jobs get new idempotency keys), keeping the jobs of an array step's
    indices that succeeded; succeeded steps keep their jobs and outputs. ``seen_attempt``: the
    attempt the caller saw end; a run past it was retried already, and is answered as it is (a
    retry asked twice is one retry)."""
    if seen_attempt is not None and run.attempt > seen_attempt:
        return run
    if seen_attempt is not None and seen_attempt > run.attempt:
        raise RetryRefused(f"the run has had no attempt {seen_attempt}: it is at attempt {run.attempt}")
    if run.state == RunState.running:
        raise RetryRefused("the run is still running: cancel it first, or wait for its end")
    if run.state == RunState.succeeded:
        raise RetryRefused("the run succeeded: nothing to retry")
    steps = {
        name: step
        if step.state == StepState.succeeded
        else StepRun(
            attempt=step.attempt + 1,
            jobs={i: job for i, job in step.jobs.items() if job.outcome == "succeeded"},
        )
        for name, step in run.steps.items()
    }
    return run.model_copy(
        update={
            "state": RunState.running,
            "steps": steps,
            "cancel_requested": False,
            "ended": None,
            "attempt": run.attempt + 1,
        }
    )


def retried_steps(before: PipelineRun, after: PipelineRun) -> list[str]:
    """The steps a retry runs again (in the spec's order)."""
    return [s.name for s in after.spec.steps if after.steps[s.name].attempt > before.steps[s.name].attempt]


def pending_lookups(run: PipelineRun) -> list[str]:
    """The ``cache: true`` steps waiting for the service's look in the step cache."""
    if run.state != RunState.running or run.cancel_requested:
        return []
    return [
        name
        for name, step in run.steps.items()
        if step.cache is not None and step.cache.state == "lookup" and step.state not in TERMINAL_STEP_STATES
    ]


def unanswered(run: PipelineRun) -> list[Submit]:
    """Submissions recorded but not yet answered with a job id: sent (again) by the service."""
    if run.state != RunState.running or run.cancel_requested:
        return []
    return [
        Submit(name, index, job.key)
        for name, step in run.steps.items()
        if step.state == StepState.running
        for index, job in step.jobs.items()
        if job.job_id is None
    ]


def has_dependents(run: PipelineRun, step: str) -> bool:
    """Whether a later step depends on ``step``: then its job packs its outputs folder for them."""
    return any(step in other.depends for other in run.spec.steps)  # a list or a mapping of names


def step_inputs(run: PipelineRun, step: str) -> list[StepInput] | EndStep:
    """The outputs folders ``step`` gets under ``$TRAINYARD_INPUTS``: one per dependency whose job
    reported one (``<dep>``), one per index of an array dependency (``<dep>/<index>``); only the
    step's own dependencies. A dependency that failed, was skipped, or packed nothing has no entry
    (its folder is absent, not empty). More than MAX_STEP_INPUTS: the step fails, saying so."""
    inputs: list[StepInput] = []
    for dep in run.spec.step(step).conditions():
        spec, jobs = run.spec.step(dep), run.steps[dep].jobs
        for index, job in sorted(jobs.items()):
            if job.outputs_digest is not None:
                path = f"{dep}/{index}" if spec.array else dep
                inputs.append(StepInput(path=path, digest=job.outputs_digest))
    if len(inputs) > MAX_STEP_INPUTS:
        return EndStep(
            step,
            StepState.failed,
            f"its dependencies passed {len(inputs)} outputs folders, more than the "
            f"{MAX_STEP_INPUTS} a step takes under $TRAINYARD_INPUTS",
        )
    return inputs


MODEL_OUTPUTS = ("model_name", "model_version")


class ModelNotYet(Exception):
    """A step's job names a model to register and the registry has not said its version yet."""


def outputs_of_record(
    record: JobRecord, now: datetime, model_wait: timedelta
) -> dict[str, OutputValue] | None:
    """A succeeded step's outputs as its dependents see them: what its job wrote to outputs.json,
    and, for a job that registers a model, ``model_name`` and ``model_version`` as the registry
    recorded them (never the job's own: a job cannot say which version it became). The registry
    registers after the job's end: ModelNotYet until it has, for ``model_wait`` after the record's
    last change (a registry away longer: the dependents go on without them)."""
    outputs = {k: v for k, v in (record.outputs or {}).items() if k not in MODEL_OUTPUTS}
    if record.model is not None:
        outputs.update(model_name=record.model.name, model_version=record.model.version)
    elif record.spec.outputs and record.spec.outputs.model and now - record.updated_at < model_wait:
        raise ModelNotYet(record.job_id)
    return outputs or None


def job_spec_for(run: PipelineRun, step: str, index: int, job: JobSpec | None = None) -> JobSpec:
    """The job to submit for ``step`` (index ``index`` of an array): the step's spec (``job``: as
    :func:`with_outputs` filled it in), labelled with its run, step, index and attempt, so a job
    record says which run it belongs to; an array's job also carries its index and the array's size
    (``array_task``: its TRAINYARD_ARRAY_* env)."""
    spec = run.spec.step(step)
    job = job or spec.job
    assert job is not None, "a sweep step is started as a sweep, not submitted as a job"
    labels = {
        **job.labels,
        RUN_LABEL: run.run_id,
        STEP_LABEL: step,
        ATTEMPT_LABEL: str(run.steps[step].attempt),
    }
    if not spec.array:
        return job.model_copy(update={"labels": labels})
    labels[INDEX_LABEL] = str(index)
    task = ArrayTask(index=index, count=len(indices_of(spec)))
    return job.model_copy(update={"labels": labels, "array_task": task})


@dataclass(frozen=True)
class StepRef:
    run_id: str
    step: str
    index: int


def step_of(labels: dict[str, str]) -> StepRef | None:
    """Which run and step a job belongs to, from its labels; None for a job of no pipeline."""
    run_id, step = labels.get(RUN_LABEL), labels.get(STEP_LABEL)
    if not run_id or not step:
        return None
    index = labels.get(INDEX_LABEL, "0")
    return StepRef(run_id, step, int(index)) if index.isdigit() else None


def submitted_under(record: JobRecord, key: str) -> bool:
    """Whether the workflow service submitted the job under ``key``: its record's idempotency slot
    is in the namespace of the workflow's own intake subject, which no other sender may publish to.
    Its labels alone prove nothing."""
    return record.idempotency_slot == idempotency_slot(WORKFLOW_INTAKE, key)
