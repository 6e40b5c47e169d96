"""A sweep as a pipeline step, pure: the sweep's id for a step's attempt, what the sweep says about
its step, and the step's outputs once it succeeded. No I/O (the service reads the sweep and the
best trial's job record)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from trainyard_contracts import JobRecord
from trainyard_contracts.stepoutputs import OutputValue
from trainyard_contracts.sweeps import SweepRecord, SweepState
from trainyard_workflow.core import MODEL_OUTPUTS, Fact, JobEnded, JobKnown, outputs_of_record


def sweep_id_for(key: str) -> str:
    """The id of the sweep a sweep step's attempt starts (``key``: the step's idempotency key,
    from the run, the step and the step's attempt): the same every time the step is taken, so a
    step taken again (a redelivery, a restart, the look-over) never starts a second sweep."""
    return "sw" + hashlib.sha256(key.encode()).hexdigest()[:18]


def sweep_facts(step: str, key: str, sweep: SweepRecord) -> list[Fact]:
    """What a sweep says about its step: its id (the step's "job"), and its end once it ended:
    ``succeeded`` with a best trial; otherwise how it ended (a sweep that succeeded with no best
    trial failed its step)."""
    facts: list[Fact] = [JobKnown(step, 0, key, sweep.sweep_id)]
    if sweep.state == SweepState.running:
        return facts
    if sweep.state == SweepState.succeeded:
        outcome = "succeeded" if sweep.best_trial() is not None else "failed"
    else:
        outcome = "cancelled" if sweep.state == SweepState.cancelled else "failed"
    return [*facts, JobEnded(step, 0, sweep.sweep_id, outcome)]


def sweep_outputs(
    sweep: SweepRecord, best_job: JobRecord | None, now: datetime, model_wait: timedelta
) -> dict[str, OutputValue] | None:
    """A succeeded sweep step's outputs: its best trial's parameters (each under its own name),
    ``objective``, ``trial``, ``job_id``, ``sweep_id``, and the model the best trial's job
    registered (``model_name``, ``model_version``: ModelNotYet until the registry has said it,
    as for a job step)."""
    best = sweep.best_trial()
    if best is None or best.value is None:
        return None
    outputs: dict[str, OutputValue] = {**best.params}
    outputs.update(sweep_id=sweep.sweep_id, trial=best.number, objective=best.value)
    if best.job_id:
        outputs["job_id"] = best.job_id
    if best_job is not None:
        model = outputs_of_record(best_job, now, model_wait) or {}
        outputs.update({name: model[name] for name in MODEL_OUTPUTS if name in model})
    return outputs
