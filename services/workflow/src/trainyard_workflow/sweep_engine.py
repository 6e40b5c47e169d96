"""Optuna as the sweep's engine, through ask/tell only, and without storage of its own.

The sweep record (its KV value) is the study's journal: every trial's parameters, state, value,
intermediate values and the pruner's notes (``completed_rung_<n>``, Optuna's system attrs) are in
it. Each question is answered by a study rebuilt in memory from the record, so the answers are a
function of the record (and the seed): a restarted service, or another replica, asks the same
study (docs/workflows.md, "Sweeps", for why not a journal file).

- :func:`ask`: the parameters of the next trials (a grid: the next points in order);
- :func:`should_prune`: whether a running trial's last report prunes it, with the notes to keep.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState

from trainyard_contracts.spec import ParamValue
from trainyard_contracts.sweeps import (
    CategoricalParam,
    Direction,
    FloatParam,
    PrunerKind,
    SamplerKind,
    SweepRecord,
    SweepSpec,
    Trial,
    TrialState,
    grid_points,
)

optuna.logging.set_verbosity(logging.WARNING)

_STATES = {
    TrialState.started: OptunaState.RUNNING,
    TrialState.pruning: OptunaState.RUNNING,
    TrialState.complete: OptunaState.COMPLETE,
    TrialState.pruned: OptunaState.PRUNED,
    TrialState.failed: OptunaState.FAIL,
    TrialState.cancelled: OptunaState.FAIL,
}


def distributions(spec: SweepSpec) -> dict[str, BaseDistribution]:
    out: dict[str, BaseDistribution] = {}
    for name, param in spec.space.items():
        if isinstance(param, CategoricalParam):
            out[name] = CategoricalDistribution(param.choices)
        elif isinstance(param, FloatParam):
            out[name] = FloatDistribution(param.low, param.high, log=param.log, step=param.step)
        else:
            out[name] = IntDistribution(param.low, param.high, log=param.log, step=param.step)
    return out


def base_seed(record: SweepRecord) -> int:
    """The spec's seed, or one derived from the sweep id: the same record asks the same points."""
    if record.spec.sampler.seed is not None:
        return record.spec.sampler.seed
    return int.from_bytes(hashlib.sha256(record.sweep_id.encode()).digest()[:4], "big")


def _sampler(record: SweepRecord) -> optuna.samplers.BaseSampler:
    sampler = record.spec.sampler
    # seeded by how many trials exist: each launch draws from its own, reproducible stream
    seed = (base_seed(record) + len(record.trials)) % 2**32
    if sampler.type == SamplerKind.tpe:
        return optuna.samplers.TPESampler(
            seed=seed, constant_liar=sampler.constant_liar, n_startup_trials=sampler.n_startup_trials
        )
    return optuna.samplers.RandomSampler(seed=seed)


def _pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    pruner = spec.pruner
    if pruner.type == PrunerKind.median:
        return optuna.pruners.MedianPruner(
            n_startup_trials=pruner.n_startup_trials, n_warmup_steps=pruner.n_warmup_steps
        )
    if pruner.type == PrunerKind.asha:
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=pruner.min_resource, reduction_factor=pruner.reduction_factor
        )
    return optuna.pruners.NopPruner()


def _frozen(trial: Trial, dists: dict[str, BaseDistribution]) -> FrozenTrial:
    state = _STATES[trial.state]
    intermediate = {step: value for step, value in trial.intermediate.items() if math.isfinite(value)}
    return optuna.trial.create_trial(
        state=state,
        value=trial.value if state == OptunaState.COMPLETE else None,
        params={name: trial.params[name] for name in dists if name in trial.params},
        distributions={name: dist for name, dist in dists.items() if name in trial.params},
        intermediate_values=intermediate,
        system_attrs=dict(trial.rungs),
    )


def study_of(record: SweepRecord, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """An in-memory study holding the record's trials, in order (trial n is Optuna's trial n)."""
    spec = record.spec
    maximize = spec.objective.direction == Direction.maximize
    direction = optuna.study.StudyDirection.MAXIMIZE if maximize else optuna.study.StudyDirection.MINIMIZE
    study = optuna.create_study(
        direction=direction,
        sampler=sampler or optuna.samplers.RandomSampler(seed=0),
        pruner=_pruner(spec),
    )
    dists = distributions(spec)
    for trial in record.trials:
        study.add_trial(_frozen(trial, dists))
    return study


def ask(record: SweepRecord, count: int) -> list[dict[str, ParamValue]]:
    """The parameters of the next ``count`` trials. Running trials are in the study, so TPE with
    ``constant_liar`` treats them as bad ones and parallel trials spread out. A grid launches its
    points in order (fewer than ``count`` when it runs out)."""
    if count <= 0:
        return []
    spec = record.spec
    if spec.sampler.type == SamplerKind.grid:
        return grid_points(spec.space)[len(record.trials) : len(record.trials) + count]
    study = study_of(record, _sampler(record))
    dists = distributions(spec)
    asked = []
    for _ in range(count):
        trial = study.ask(dists)  # stays RUNNING in this study: the next ask sees it
        asked.append(_plain(trial.params))
    return asked


def _plain(params: dict[str, Any]) -> dict[str, ParamValue]:
    out: dict[str, ParamValue] = {}
    for name, value in params.items():
        out[name] = value.item() if hasattr(value, "item") else value  # numpy scalars from a sampler
    return out


def should_prune(record: SweepRecord, number: int) -> tuple[bool, dict[str, float]]:
    """Whether running trial ``number``'s last report prunes it (Optuna's pruner, as
    ``trial.should_prune()`` asks it), and the pruner's notes on the trial after asking (ASHA
    writes the value each rung saw, ``completed_rung_<n>``: kept in the record for the next
    question)."""
    trial = record.trial(number)
    if trial is None or trial.state != TrialState.started or not trial.intermediate:
        return False, dict(trial.rungs) if trial else {}
    if record.spec.pruner.type == PrunerKind.none:
        return False, dict(trial.rungs)
    study = study_of(record)
    frozen = study.get_trials(deepcopy=False)[number]
    pruned = bool(study.pruner.prune(study, frozen))
    after = study.get_trials(deepcopy=False)[number].system_attrs
    rungs = {key: float(value) for key, value in after.items() if key.startswith("completed_rung_")}
    return pruned, rungs


__all__ = ["ask", "base_seed", "distributions", "should_prune", "study_of"]
