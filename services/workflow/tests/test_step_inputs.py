"""Step inputs: which upstream outputs folders a step's job gets under ``$TRAINYARD_INPUTS`` (only its
own dependencies', one per array index), whether its own are packed (only when a later step depends
on it)."""

from __future__ import annotations

from typing import Any

import pytest

from trainyard_contracts.runs import PipelineRun, StepState
from trainyard_contracts.spec import MAX_STEP_INPUTS, StepInput
from trainyard_contracts.workflow import PipelineSpec
from trainyard_workflow.core import (
    EndStep,
    JobEnded,
    JobKnown,
    advance,
    evolve,
    has_dependents,
    step_inputs,
)

pytestmark = [pytest.mark.unit, pytest.mark.workflow]
RUN = "run-000001"
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def started(*steps: dict[str, Any]) -> PipelineRun:
    spec = PipelineSpec.model_validate(
        {"name": "p", "steps": [{"job": {"name": s["name"], "command": ["true"]}, **s} for s in steps]}
    )
    return PipelineRun.start(RUN, spec)


def run_to_end(run: PipelineRun, step: str, outcome: str, digests: dict[int, str | None]) -> PipelineRun:
    """Submit what is due, answer ``step``'s jobs, end them with ``digests`` (per index)."""
    run, _ = advance(run)
    for index, job in run.steps[step].jobs.items():
        job_id = f"job-{step}-{index}"
        run = evolve(run, JobKnown(step, index, job.key, job_id))
        run = evolve(run, JobEnded(step, index, job_id, outcome, digests.get(index)))
    run, _ = advance(run)
    return run


def test_a_step_gets_the_folders_of_its_own_dependencies_only():
    run = started(
        {"name": "prepare"},
        {"name": "other"},
        {"name": "train", "depends": ["prepare"]},
    )
    run = run_to_end(run, "prepare", "succeeded", {0: DIGEST_A})
    run = run_to_end(run, "other", "succeeded", {0: DIGEST_B})
    assert run.steps["prepare"].jobs[0].outputs_digest == DIGEST_A
    assert step_inputs(run, "train") == [StepInput(path="prepare", digest=DIGEST_A)]
    assert step_inputs(run, "prepare") == []
    assert has_dependents(run, "prepare") and not has_dependents(run, "other")
    assert not has_dependents(run, "train")


def test_an_array_dependency_gives_one_folder_per_index():
    run = started({"name": "train", "array": "0-2"}, {"name": "evaluate", "depends": ["train"]})
    run = run_to_end(run, "train", "succeeded", {0: DIGEST_A, 1: DIGEST_B, 2: DIGEST_A})
    assert step_inputs(run, "evaluate") == [
        StepInput(path="train/0", digest=DIGEST_A),
        StepInput(path="train/1", digest=DIGEST_B),
        StepInput(path="train/2", digest=DIGEST_A),
    ]


def test_a_failed_dependency_has_no_folder_even_if_one_was_reported():
    run = started({"name": "a"}, {"name": "cleanup", "depends": {"a": "finished"}})
    run = run_to_end(run, "a", "failed", {0: DIGEST_A})
    assert run.steps["a"].jobs[0].outputs_digest is None
    assert step_inputs(run, "cleanup") == []


def test_more_folders_than_a_step_takes_fail_the_step_saying_so():
    count = MAX_STEP_INPUTS + 1
    run = started({"name": "train", "array": f"0-{count - 1}"}, {"name": "evaluate", "depends": ["train"]})
    run = run_to_end(run, "train", "succeeded", dict.fromkeys(range(count), DIGEST_A))
    ended = step_inputs(run, "evaluate")
    assert isinstance(ended, EndStep) and ended.state == StepState.failed
    assert f"more than the {MAX_STEP_INPUTS}" in (ended.reason or "")


@pytest.mark.parametrize("path", ["../x", "a/b", "a/01", "/a", "a/-1", "A", "a/1/2"])
def test_an_input_path_is_a_step_name_or_a_step_and_an_index(path: str):
    with pytest.raises(ValueError):
        StepInput(path=path, digest=DIGEST_A)
