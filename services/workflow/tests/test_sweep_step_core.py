"""A sweep step in the pure core and the run's use cases, with an in-memory run store and sweeps:
what a sweep says about its step, the outputs of a succeeded one, one sweep id per step attempt,
and a sweep the sweeps refuse failing its step with the reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from trainyard_contracts.runs import PipelineRun
from trainyard_contracts.sweeps import SweepOwner, SweepRecord, SweepSpec, SweepState, Trial, TrialState
from trainyard_contracts.workflow import validate_pipeline
from trainyard_workflow.core import JobEnded, JobKnown, idempotency_key
from trainyard_workflow.service import WorkflowService
from trainyard_workflow.sweep_step import sweep_facts, sweep_id_for, sweep_outputs

from .test_step_forgery import MemoryRuns

pytestmark = [pytest.mark.unit, pytest.mark.workflow, pytest.mark.sweep]
NOW = datetime(2026, 12, 3, tzinfo=UTC)
SWEEP = {
    "name": "s",
    "job": {"name": "t", "command": ["true", "${{ params.lr }}"]},
    "space": {"lr": {"type": "float", "low": 0.01, "high": 0.1}},
    "objective": {"metric": "loss", "direction": "minimize"},
}
PIPELINE = {"name": "p", "steps": [{"name": "search", "sweep": SWEEP}]}


def record(state: SweepState, values: list[float | None]) -> SweepRecord:
    spec = validate_pipeline(PIPELINE).steps[0].sweep
    assert spec is not None
    trials = [
        Trial(number=i, params={"lr": 0.01 * (i + 1)}, key=f"k{i}", job_id=f"job{i}", value=v,
              state=TrialState.complete if v is not None else TrialState.failed)
        for i, v in enumerate(values)
    ]  # fmt: skip
    best = min((t for t in trials if t.value is not None), key=lambda t: t.value or 0, default=None)
    return SweepRecord(
        sweep_id="sw1", spec=spec, state=state, trials=trials, best=best.number if best else None
    )


def test_a_sweep_ends_its_step_succeeded_only_with_a_best_trial() -> None:
    key = idempotency_key("run-aaaaaa", "search", 0, 1)
    assert sweep_facts("search", key, record(SweepState.running, [None])) == [
        JobKnown("search", 0, key, "sw1")
    ]
    outcomes = {
        (SweepState.succeeded, 0.5): "succeeded",
        (SweepState.succeeded, None): "failed",
        (SweepState.failed, 0.5): "failed",
        (SweepState.cancelled, 0.5): "cancelled",
    }
    for (state, value), outcome in outcomes.items():
        facts = sweep_facts("search", key, record(state, [value]))
        assert facts[-1] == JobEnded("search", 0, "sw1", outcome)


def test_a_sweep_steps_outputs_are_its_best_trials() -> None:
    sweep = record(SweepState.succeeded, [0.9, 0.2, None])
    outputs = sweep_outputs(sweep, None, NOW, timedelta(minutes=5))
    assert outputs == {"lr": 0.02, "sweep_id": "sw1", "trial": 1, "objective": 0.2, "job_id": "job1"}
    assert sweep_outputs(record(SweepState.failed, [None]), None, NOW, timedelta(minutes=5)) is None


def test_the_sweep_id_is_one_per_run_step_and_attempt() -> None:
    first = sweep_id_for(idempotency_key("run-aaaaaa", "search", 0, 1))
    assert first == sweep_id_for(idempotency_key("run-aaaaaa", "search", 0, 1))
    assert len({first, sweep_id_for(idempotency_key("run-aaaaaa", "search", 0, 2))}) == 2
    assert first.startswith("sw") and len(first) == 20


class Sweeps:
    """The sweeps a run starts, in memory; ``refuse``: every start raises it."""

    def __init__(self, refuse: Exception | None = None) -> None:
        self.started: dict[str, SweepOwner] = {}
        self.calls: list[str] = []
        self.refuse = refuse

    async def start_owned(
        self, sweep_id: str, spec: SweepSpec, by: str | None, owner: SweepOwner
    ) -> SweepRecord:
        self.calls.append(sweep_id)
        if self.refuse is not None:
            raise self.refuse
        self.started.setdefault(sweep_id, owner)
        return SweepRecord(sweep_id=sweep_id, spec=spec, created=NOW, created_by=by, owner=owner)

    async def status(self, sweep_id: str) -> SweepRecord:
        raise LookupError(sweep_id)

    async def cancel(self, sweep_id: str, by: str | None = None) -> SweepRecord:
        raise LookupError(sweep_id)


async def _noop(*_: Any) -> None:
    return None


def workflow(sweeps: Sweeps) -> tuple[WorkflowService, MemoryRuns]:
    runs = MemoryRuns(PipelineRun.start("run-forged-1", validate_pipeline(PIPELINE)))
    service = WorkflowService(runs, read_job=_noop, intake=None, emit=_noop)  # type: ignore[arg-type]
    service.sweeps = sweeps
    return service, runs


async def test_a_sweep_step_taken_again_starts_no_second_sweep() -> None:
    sweeps = Sweeps()
    service, runs = workflow(sweeps)
    await service.progress("run-forged-1")
    # the answer lost (a restart): the step's submission is unanswered again, and taken again
    job = runs.run.steps["search"].jobs[0]
    steps = {
        "search": runs.run.steps["search"].model_copy(
            update={"jobs": {0: job.model_copy(update={"job_id": None})}}
        )
    }
    runs.run = runs.run.model_copy(update={"steps": steps})
    await service.progress("run-forged-1")
    expected = sweep_id_for(idempotency_key("run-forged-1", "search", 0, 1))
    assert sweeps.calls == [expected, expected] and list(sweeps.started) == [expected]
    assert sweeps.started[expected] == SweepOwner(run_id="run-forged-1", step="search", attempt=1)
    assert (
        runs.run.steps["search"].jobs[0].job_id == expected
        and runs.run.steps["search"].state.value == "running"
    )


async def test_a_sweep_the_sweeps_refuse_fails_its_step_with_the_reason() -> None:
    service, runs = workflow(Sweeps(refuse=ValueError("there are 1000 sweeps already: delete one first")))
    await service.progress("run-forged-1")
    step = runs.run.steps["search"]
    assert step.state.value == "failed" and "1000 sweeps already" in (step.reason or "")
    assert runs.run.state.value == "failed"
