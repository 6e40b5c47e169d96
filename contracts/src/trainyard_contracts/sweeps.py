"""Sweeps: a hyperparameter search run as jobs (the workflow service's objects, docs/workflows.md,
"Sweeps").

A :class:`SweepSpec` names a job template, a search space, an objective (a metric the trials report
with ``trainyard.report`` or ``mlflow.log_metric``, and a direction) and the limits of the search;
the workflow service asks Optuna for each trial's parameters, submits the trial as a job with them
substituted (``${{ params.NAME }}``, as in pipelines) and keeps every trial in a
:class:`SweepRecord` (its KV value, every change a compare-and-set).

Requests go on ``<prefix>.workflow.sweep-<verb>`` (request/reply, as schedules and triggers do):
``create`` (sweep), ``list`` (limit), ``get``/``cancel`` (name: the sweep's id). Answers are a
:class:`SweepReply`.
"""

from __future__ import annotations

import itertools
import math
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from trainyard_contracts._time import utcnow
from trainyard_contracts.documents import model_of_document
from trainyard_contracts.metrics import METRIC_NAME_PATTERN
from trainyard_contracts.spec import FieldError, JobSpec, Name, ParamValue, SpecError, field_errors

MAX_SPACE = 32  # parameters in a search space
MAX_CHOICES = 100  # values of one categorical parameter
MAX_TRIALS = 200  # a record of 200 trials, each with its intermediate values, stays under 1 MiB
MAX_PARALLEL = 64
MAX_INTERMEDIATE = 64  # intermediate values kept per trial (for pruning); later steps: the last value only
MAX_GRID = 100_000  # points of a grid search space
SWEEP_VERBS = ("create", "list", "get", "cancel")
PRUNED_REASON = "pruned"  # a pruned trial's job ends `cancelled` with this reason

# labels on a trial's job: which sweep and trial it is (the metrics and outcomes are matched by them)
SWEEP_LABEL = "trainyard.dev/sweep"
TRIAL_LABEL = "trainyard.dev/sweep-trial"

ParamName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
MetricName = Annotated[str, StringConstraints(pattern=METRIC_NAME_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FloatParam(_Strict):
    type: Literal["float"] = "float"
    low: float
    high: float
    log: bool = Field(False, description="sampled uniformly in log space (low > 0)")
    step: float | None = Field(
        None, gt=0, description="a grid of low, low+step, ... (required by the grid sampler)"
    )


class IntParam(_Strict):
    type: Literal["int"] = "int"
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)


class CategoricalParam(_Strict):
    type: Literal["categorical"] = "categorical"
    choices: list[ParamValue] = Field(min_length=1, max_length=MAX_CHOICES)


SearchParam = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class Direction(StrEnum):
    minimize = "minimize"
    maximize = "maximize"


class Objective(_Strict):
    metric: MetricName = Field(
        description="a metric the trial reports (trainyard.report or mlflow.log_metric)"
    )
    direction: Direction


class SamplerKind(StrEnum):
    random = "random"
    grid = "grid"
    tpe = "tpe"


class SamplerSpec(_Strict):
    type: SamplerKind = SamplerKind.tpe
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="the same seed asks the same parameters")
    constant_liar: bool = Field(
        True, description="tpe: running trials count as bad ones, so parallel trials spread out"
    )
    n_startup_trials: int = Field(5, ge=0, le=MAX_TRIALS, description="tpe: random trials before it models")


class PrunerKind(StrEnum):
    none = "none"
    median = "median"
    asha = "asha"


class PrunerSpec(_Strict):
    type: PrunerKind = PrunerKind.none
    n_startup_trials: int = Field(3, ge=0, description="median: trials that must have ended before any prune")
    n_warmup_steps: int = Field(0, ge=0, description="median: steps a trial reports before it may be pruned")
    min_resource: int = Field(1, ge=1, description="asha: the first rung's step")
    reduction_factor: int = Field(3, ge=2, le=100, description="asha: 1/reduction_factor of a rung go on")


class SweepSpec(_Strict):
    """A search: ``max_trials`` jobs from ``job`` with parameters from ``space``, at most
    ``max_parallel`` unfinished at once; it stops launching once more than ``max_failed`` failed."""

    name: Name
    job: dict[str, Any] = Field(description="a job spec; ${{ params.NAME }} is each trial's value")
    space: dict[ParamName, SearchParam] = Field(min_length=1, max_length=MAX_SPACE)
    objective: Objective
    max_trials: int = Field(10, ge=1, le=MAX_TRIALS)
    max_parallel: int = Field(2, ge=1, le=MAX_PARALLEL)
    max_failed: int = Field(
        3, ge=0, le=MAX_TRIALS, description="more failed trials than this ends the sweep failed"
    )
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)


def _space_errors(spec: SweepSpec) -> list[FieldError]:
    errors = []
    for name, param in spec.space.items():
        where = f"space.{name}"
        if isinstance(param, (FloatParam, IntParam)):
            if not param.low < param.high:
                errors.append(FieldError(field=f"{where}.high", message=f"must be above low ({param.low})"))
            if param.log and param.low <= 0:
                errors.append(FieldError(field=f"{where}.low", message="must be above 0 with log: true"))
            if param.log and param.step not in (None, 1):
                errors.append(FieldError(field=f"{where}.step", message="cannot be combined with log: true"))
            if isinstance(param, FloatParam) and not (math.isfinite(param.low) and math.isfinite(param.high)):
                errors.append(FieldError(field=where, message="low and high must be finite numbers"))
        if spec.sampler.type == SamplerKind.grid and isinstance(param, FloatParam) and param.step is None:
            errors.append(
                FieldError(
                    field=f"{where}.step", message="the grid sampler needs a step for a float parameter"
                )
            )
    return errors


def grid_points(space: dict[str, Any]) -> list[dict[str, ParamValue]]:
    """Every point of a grid over ``space`` (floats need a step), in order: the grid sampler
    launches them one after another. Raises ValueError over MAX_GRID points."""
    axes: list[list[ParamValue]] = []
    for param in space.values():
        if isinstance(param, CategoricalParam):
            axes.append(list(param.choices))
        elif isinstance(param, IntParam):
            axes.append(list(range(param.low, param.high + 1, param.step)))
        else:
            assert param.step is not None
            count = math.floor((param.high - param.low) / param.step + 1e-9) + 1
            axes.append([round(param.low + i * param.step, 12) for i in range(count)])
    if math.prod(len(axis) for axis in axes) > MAX_GRID:
        raise ValueError(f"the grid has more than {MAX_GRID} points")
    return [dict(zip(space, values, strict=True)) for values in itertools.product(*axes)]


def sample_params(space: dict[str, Any]) -> dict[str, ParamValue]:
    """A point of ``space`` to check the job template with: each parameter's low or first choice."""
    return {
        name: param.choices[0] if isinstance(param, CategoricalParam) else param.low
        for name, param in space.items()
    }


class TrialState(StrEnum):
    started = "started"  # recorded; its job sent (or to be sent again) under the trial's key
    pruning = "pruning"  # the pruner stopped it: its job's cancel was asked for
    complete = "complete"
    pruned = "pruned"
    failed = "failed"
    cancelled = "cancelled"  # the sweep was cancelled while it ran

    @property
    def ended(self) -> bool:
        return self not in (TrialState.started, TrialState.pruning)


class SweepState(StrEnum):
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class Trial(BaseModel):
    model_config = ConfigDict(frozen=True)

    number: int = Field(ge=0)
    params: dict[str, ParamValue]
    key: str = Field(description="the idempotency key its job is submitted under")
    state: TrialState = TrialState.started
    job_id: str | None = None
    value: float | None = Field(None, description="the objective: the metric's last value when the job ended")
    intermediate: dict[int, float] = Field(
        default_factory=dict, description=f"step -> the metric's value, the first {MAX_INTERMEDIATE} steps"
    )
    last_step: int | None = None
    rungs: dict[str, float] = Field(
        default_factory=dict, description="the pruner's notes (Optuna system attrs)"
    )
    reason: str | None = None
    started_at: datetime = Field(default_factory=utcnow)
    ended_at: datetime | None = None


class SweepOwner(BaseModel):
    """The pipeline step a sweep is (docs/workflows.md, "A sweep as a step"): the run, the step and
    the step's attempt that started it. The sweep's id derives from them, so a step taken again
    never starts a second sweep."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    step: str
    attempt: int = Field(ge=1)


class SweepRecord(BaseModel):
    """One sweep and its trials; every change is a compare-and-set on its KV revision."""

    model_config = ConfigDict(frozen=True)

    sweep_id: str
    spec: SweepSpec
    owner: SweepOwner | None = Field(None, description="the pipeline step this sweep is, if it is one")
    state: SweepState = SweepState.running
    trials: list[Trial] = Field(default_factory=list)
    reason: str | None = None
    best: int | None = Field(None, description="the number of the best complete trial")
    created: datetime = Field(default_factory=utcnow)
    created_by: str | None = None
    ended_at: datetime | None = None

    def trial(self, number: int) -> Trial | None:
        return self.trials[number] if 0 <= number < len(self.trials) else None

    def best_trial(self) -> Trial | None:
        return self.trial(self.best) if self.best is not None else None

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys((s.value for s in TrialState), 0)
        for trial in self.trials:
            out[trial.state.value] += 1
        return out

    def ranked(self) -> list[Trial]:
        """Trials with a value best first (by the objective's direction), then the others by number."""
        sign = -1 if self.spec.objective.direction == Direction.maximize else 1
        valued = sorted(
            (t for t in self.trials if t.value is not None), key=lambda t: (sign * (t.value or 0), t.number)
        )
        return valued + [t for t in self.trials if t.value is None]


def validate_sweep(document: Any) -> SweepSpec:
    """A sweep document; SpecError names every bad field (``space.lr.low``, ``job.resources.cpu``)."""
    spec = model_of_document(SweepSpec, document, "sweep")
    errors = sweep_problems(spec)
    if errors:
        raise SpecError(errors)
    if spec.max_parallel > spec.max_trials:
        spec = spec.model_copy(update={"max_parallel": spec.max_trials})
    return spec


def sweep_problems(spec: SweepSpec) -> list[FieldError]:
    """What a well-formed sweep may still get wrong (its space, its grid, its job template with a
    sample point), each naming its field; [] for a sweep that can run."""
    errors = _space_errors(spec)
    if not errors and spec.sampler.type == SamplerKind.grid:
        try:
            grid_points(spec.space)
        except ValueError as exc:
            errors.append(FieldError(field="space", message=str(exc)))
    if errors:
        return errors
    try:
        trial_job(spec, sample_params(spec.space), "sweep-check", 0)  # the template, with a sample point
    except SpecError as exc:
        return list(exc.errors)
    return []


def trial_job(
    spec: SweepSpec,
    params: dict[str, ParamValue],
    sweep_id: str,
    number: int,
    owner: SweepOwner | None = None,
) -> JobSpec:
    """Trial ``number``'s job: the template with ``params`` substituted, the parameters in its
    ``params`` (MLflow logs them) and labels naming the sweep and trial, and for a sweep that is a
    pipeline step (``owner``) its run and step (the registry tags the trial's model with all four).
    SpecError names the field (``job.command.2``)."""
    from trainyard_contracts.workflow import RUN_LABEL, STEP_LABEL, substitute

    try:
        body = substitute(spec.job, params, "job")
        # an argument or a variable that is one parameter is its value as text (--lr 0.01)
        if isinstance(body.get("command"), list):
            body["command"] = [_text(arg) for arg in body["command"]]
        if isinstance(body.get("env"), dict):
            body["env"] = {name: _text(value) for name, value in body["env"].items()}
        own = {**(body.get("labels") or {}), SWEEP_LABEL: sweep_id, TRIAL_LABEL: str(number)}
        if owner is not None:
            own.update({RUN_LABEL: owner.run_id, STEP_LABEL: owner.step})
        job = JobSpec.model_validate(
            {**body, "params": {**(body.get("params") or {}), **params}, "labels": own}
        )
    except ValidationError as exc:
        raise SpecError(
            [FieldError(field=f"job.{e.field}", message=e.message) for e in field_errors(exc)]
        ) from None
    return job


def _text(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, (int, float)) else value


class SweepRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sweep: dict[str, Any] | None = Field(None, description="create: the sweep document")
    name: str | None = Field(None, max_length=64, description="get, cancel: the sweep's id")
    limit: int = Field(100, ge=1, le=1000)
    by: str | None = Field(None, max_length=256, description="who asks (the API's principal)")


class SweepReply(BaseModel):
    model_config = ConfigDict(frozen=True)

    ok: bool
    status: int = 200
    sweep: SweepRecord | None = None
    sweeps: list[SweepRecord] | None = None
    errors: list[FieldError] = Field(default_factory=list)


__all__ = [
    "MAX_INTERMEDIATE",
    "PRUNED_REASON",
    "SWEEP_LABEL",
    "SWEEP_VERBS",
    "TRIAL_LABEL",
    "CategoricalParam",
    "Direction",
    "FloatParam",
    "IntParam",
    "Objective",
    "PrunerKind",
    "PrunerSpec",
    "SamplerKind",
    "SamplerSpec",
    "SweepOwner",
    "SweepRecord",
    "SweepReply",
    "SweepRequest",
    "SweepSpec",
    "SweepState",
    "Trial",
    "TrialState",
    "grid_points",
    "sample_params",
    "sweep_problems",
    "trial_job",
    "validate_sweep",
]
