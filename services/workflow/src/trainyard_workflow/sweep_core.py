"""The sweep's pure core: what a fact does to a sweep record, what to launch now, which trial to
prune, when the sweep is done. No I/O; the engine (Optuna's ask and pruner,
``trainyard_workflow.sweep_engine``) comes in as two functions, so tests can pass others.

``advance(record, facts, now, engine)`` applies the facts, then takes every decision due: new
trials asked and recorded (up to ``max_parallel`` unfinished, ``max_trials`` in all), the sweep's
end. It answers the new record and what the service must do outside it: submit trials' jobs,
cancel jobs (a pruned trial's, or an ended sweep's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from trainyard_contracts.spec import ParamValue
from trainyard_contracts.sweeps import (
    MAX_INTERMEDIATE,
    PRUNED_REASON,
    SamplerKind,
    SweepRecord,
    SweepState,
    Trial,
    TrialState,
    grid_points,
)

Ask = Callable[[SweepRecord, int], list[dict[str, ParamValue]]]
Prune = Callable[[SweepRecord, int], tuple[bool, dict[str, float]]]


@dataclass(frozen=True)
class Engine:
    ask: Ask
    should_prune: Prune


# -- facts --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobKnown:
    """The intake answered trial ``number``'s key with ``job_id``."""

    number: int
    job_id: str


@dataclass(frozen=True)
class Reported:
    """Trial ``number``'s job reported the objective at these steps (in the order reported)."""

    number: int
    job_id: str
    points: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class JobEnded:
    """Trial ``number``'s job ended: ``outcome`` is its end state (or ``rejected`` at the intake),
    ``value`` the objective's last value (None: it reported none), ``reason`` the job's."""

    number: int
    job_id: str
    outcome: str
    value: float | None = None
    reason: str | None = None


@dataclass(frozen=True)
class CancelSweep:
    by: str | None = None


Fact = JobKnown | Reported | JobEnded | CancelSweep

# -- decisions (what the service does outside the record) ---------------------------------------


@dataclass(frozen=True)
class SubmitTrial:
    number: int


@dataclass(frozen=True)
class CancelJob:
    number: int
    job_id: str
    reason: str


@dataclass(frozen=True)
class SweepEnded:
    state: SweepState
    reason: str


Decision = SubmitTrial | CancelJob | SweepEnded


def trial_key(sweep_id: str, number: int) -> str:
    """The idempotency key of a trial's job: the intake maps it to one job for good."""
    return f"sweep:{sweep_id}:{number}"


def open_trials(record: SweepRecord) -> list[Trial]:
    return [t for t in record.trials if not t.state.ended]


def failed_count(record: SweepRecord) -> int:
    return sum(1 for t in record.trials if t.state == TrialState.failed)


def trial_limit(record: SweepRecord) -> int:
    """How many trials the sweep may have in all: ``max_trials``, or fewer grid points."""
    spec = record.spec
    if spec.sampler.type == SamplerKind.grid:
        return min(spec.max_trials, len(grid_points(spec.space)))
    return spec.max_trials


def room(record: SweepRecord) -> int:
    """How many new trials may start now."""
    if record.state != SweepState.running or failed_count(record) > record.spec.max_failed:
        return 0
    left = trial_limit(record) - len(record.trials)
    return max(0, min(left, record.spec.max_parallel - len(open_trials(record))))


def unanswered(record: SweepRecord) -> list[int]:
    """Trials whose job the intake has not answered yet (sent again under the same key)."""
    return [t.number for t in record.trials if t.state == TrialState.started and t.job_id is None]


def best_of(record: SweepRecord) -> int | None:
    complete = [t for t in record.trials if t.state == TrialState.complete and t.value is not None]
    if not complete:
        return None
    return record.ranked()[0].number


# -- evolve -------------------------------------------------------------------------------------


def _replace(record: SweepRecord, trial: Trial) -> SweepRecord:
    trials = list(record.trials)
    trials[trial.number] = trial
    return record.model_copy(update={"trials": trials})


def _kept(intermediate: dict[int, float], step: int, value: float) -> dict[int, float]:
    """The first MAX_INTERMEDIATE - 1 steps reported, and always the latest: bounded, and the
    pruner sees the newest report."""
    out = dict(intermediate)
    if step not in out and len(out) >= MAX_INTERMEDIATE:
        newest = max(out)
        if newest < step:
            del out[newest]
        else:
            return out  # an older step than every kept one, after the first ones: not kept
    out[step] = value
    return out


def _ours(trial: Trial | None, job_id: str) -> bool:
    return trial is not None and (trial.job_id is None or trial.job_id == job_id)


def evolve(record: SweepRecord, fact: Fact, now: datetime) -> SweepRecord:
    if isinstance(fact, CancelSweep):
        if record.state != SweepState.running:
            return record
        reason = f"cancelled by {fact.by}" if fact.by else "cancelled"
        return _end(record, SweepState.cancelled, reason, now)
    trial = record.trial(fact.number)
    if trial is None or not _ours(trial, fact.job_id):
        return record  # not this trial's job (another key's), or no such trial
    if isinstance(fact, JobKnown):
        return _replace(record, trial.model_copy(update={"job_id": fact.job_id}))
    if trial.state.ended:
        return record  # an outcome or report after the trial ended (a redelivery): nothing more
    if isinstance(fact, Reported):
        intermediate = trial.intermediate
        last = trial.last_step
        for step, value in fact.points:
            intermediate = _kept(intermediate, step, value)
            last = step if last is None else max(last, step)
        return _replace(
            record,
            trial.model_copy(update={"intermediate": intermediate, "last_step": last, "job_id": fact.job_id}),
        )
    return _replace(record, _ended(record, trial, fact, now))


def _ended(record: SweepRecord, trial: Trial, fact: JobEnded, now: datetime) -> Trial:
    metric = record.spec.objective.metric
    update: dict[str, object] = {"job_id": fact.job_id, "ended_at": now}
    value = fact.value
    if value is None and trial.intermediate:  # not in the job's last batch: the last value seen
        value = trial.intermediate[max(trial.intermediate)]
    if trial.state == TrialState.pruning or (fact.outcome == "cancelled" and fact.reason == PRUNED_REASON):
        update.update(state=TrialState.pruned, reason=trial.reason or PRUNED_REASON)
    elif fact.outcome == "succeeded" and value is not None:
        update.update(state=TrialState.complete, value=value, reason=None)
    elif fact.outcome == "succeeded":
        update.update(state=TrialState.failed, reason=f"the job succeeded but reported no {metric!r}")
    else:
        detail = f": {fact.reason}" if fact.reason else ""
        update.update(state=TrialState.failed, reason=f"the job ended {fact.outcome}{detail}"[:1000])
    return trial.model_copy(update=update)


def _end(record: SweepRecord, state: SweepState, reason: str, now: datetime) -> SweepRecord:
    """The sweep ends; its open trials end ``cancelled`` (their jobs are cancelled)."""
    trials = [
        t
        if t.state.ended
        else t.model_copy(update={"state": TrialState.cancelled, "reason": reason, "ended_at": now})
        for t in record.trials
    ]
    return record.model_copy(update={"state": state, "reason": reason, "trials": trials, "ended_at": now})


# -- decide -------------------------------------------------------------------------------------


def sweep_end(record: SweepRecord) -> SweepEnded | None:
    """Whether the sweep is over: too many trials failed, or every trial it may have has ended."""
    if record.state != SweepState.running:
        return None
    failed, allowed = failed_count(record), record.spec.max_failed
    if failed > allowed:
        return SweepEnded(SweepState.failed, f"{failed} trials failed (max_failed: {allowed})")
    if len(record.trials) < trial_limit(record) or open_trials(record):
        return None
    if any(t.state == TrialState.complete for t in record.trials):
        return SweepEnded(SweepState.succeeded, f"{len(record.trials)} trials ended")
    return SweepEnded(SweepState.failed, "no trial completed")


def advance(
    record: SweepRecord, facts: Iterable[Fact], now: datetime, engine: Engine
) -> tuple[SweepRecord, list[Decision]]:
    """The facts applied, then every decision due, until none is."""
    before = {t.number: t.state for t in record.trials}
    reported: list[int] = []
    for fact in facts:
        record = evolve(record, fact, now)
        if isinstance(fact, Reported):
            reported.append(fact.number)
    decisions: list[Decision] = []
    # a report may prune its trial (the pruner asked as trial.should_prune() would)
    for number in dict.fromkeys(reported):
        trial = record.trial(number)
        if trial is None or trial.state != TrialState.started:
            continue
        prune, rungs = engine.should_prune(record, number)
        if prune:
            reason = f"{PRUNED_REASON} at step {trial.last_step}"
            trial = trial.model_copy(update={"state": TrialState.pruning, "reason": reason, "rungs": rungs})
            if trial.job_id:
                decisions.append(CancelJob(number, trial.job_id, PRUNED_REASON))
        elif rungs != trial.rungs:
            trial = trial.model_copy(update={"rungs": rungs})
        record = _replace(record, trial)
    ended = sweep_end(record)
    if ended is not None:
        record = _end(record, ended.state, ended.reason, now)
        decisions.append(ended)
    count = room(record)
    if count:
        for params in engine.ask(record, count):
            number = len(record.trials)
            trial = Trial(
                number=number, params=params, key=trial_key(record.sweep_id, number), started_at=now
            )
            record = record.model_copy(update={"trials": [*record.trials, trial]})
            decisions.append(SubmitTrial(number))
    for trial in record.trials:  # trials this pass ended with the sweep: their jobs stop
        if trial.state == TrialState.cancelled and before.get(trial.number) in (
            TrialState.started,
            TrialState.pruning,
        ):
            if trial.job_id:
                decisions.append(CancelJob(trial.number, trial.job_id, "cancelled"))
    record = record.model_copy(update={"best": best_of(record)})
    return record, decisions


__all__ = [
    "CancelJob",
    "CancelSweep",
    "Decision",
    "Engine",
    "Fact",
    "JobEnded",
    "JobKnown",
    "Reported",
    "SubmitTrial",
    "SweepEnded",
    "advance",
    "evolve",
    "open_trials",
    "room",
    "sweep_end",
    "trial_key",
    "unanswered",
]
