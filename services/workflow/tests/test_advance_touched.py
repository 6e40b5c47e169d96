"""Deciding on the steps a turn changed and their dependents only (core.advance's ``touched``)
takes the same decisions as deciding on every step, outcome after outcome of a whole run."""

from __future__ import annotations

import random

import pytest

from trainyard_contracts.runs import TERMINAL_STEP_STATES, PipelineRun, RunState
from trainyard_contracts.workflow import validate_pipeline
from trainyard_workflow.core import JobEnded, JobKnown, advance, changed_steps, evolve_all, unanswered

pytestmark = [pytest.mark.workflow, pytest.mark.unit]


def _pipeline(layers: int, width: int) -> dict[str, object]:
    steps: list[dict[str, object]] = []
    for layer in range(layers):
        for i in range(width):
            step: dict[str, object] = {"name": f"s{layer}-{i}", "job": {"name": "s", "command": ["true"]}}
            if layer:
                a, b = f"s{layer - 1}-{i}", f"s{layer - 1}-{(i + 1) % width}"
                # a mix of conditions: a failure upstream skips some steps and lets others go on
                step["depends"] = {a: "finished", b: "succeeded"} if i % 3 == 0 else sorted({a, b})
            if i == 1:
                step["array"] = "0-3%2"
            steps.append(step)
    return {"name": "dag", "steps": steps}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_deciding_on_the_touched_steps_takes_the_decisions_deciding_on_all_takes(seed):
    rng = random.Random(seed)
    spec = validate_pipeline(_pipeline(6, 5))
    run, _ = advance(PipelineRun.start("0mx6rnys55u4adv1", spec))
    turns = 0
    while run.state == RunState.running:
        sends = unanswered(run)
        running = [
            (name, index, job.job_id)
            for name, step in run.steps.items()
            if step.state not in TERMINAL_STEP_STATES
            for index, job in step.jobs.items()
            if job.job_id is not None and job.outcome is None
        ]
        facts: list = [JobKnown(s.step, s.index, s.key, f"{s.step}/{s.index}") for s in sends]
        for name, index, job_id in rng.sample(running, k=min(len(running), rng.randint(1, 4))):
            facts.append(JobEnded(name, index, job_id, "failed" if rng.random() < 0.08 else "succeeded"))
        evolved = evolve_all(run, facts)
        everything = advance(evolved)
        touched = advance(evolved, touched=changed_steps(run, evolved))
        assert touched == everything
        run = everything[0]
        turns += 1
        assert turns < 500
    assert turns > 5 and run.state in (RunState.succeeded, RunState.failed)
