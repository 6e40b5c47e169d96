"""``pipeline retry``: the pure rule (what runs again, what is kept, asked twice is one retry)."""

from __future__ import annotations

import pytest

from trainyard_contracts.runs import PipelineFinished, PipelineRun, RunState, StepState
from trainyard_contracts.workflow import PipelineSpec
from trainyard_workflow.core import (
    Cancel,
    JobEnded,
    JobKnown,
    RetryRefused,
    Submit,
    advance,
    evolve,
    retried_steps,
    retry,
)

pytestmark = [pytest.mark.unit, pytest.mark.workflow]


def started(*steps: dict) -> PipelineRun:
    spec = PipelineSpec.model_validate(
        {"name": "p", "steps": [{"job": {"name": s["name"], "command": ["true"]}, **s} for s in steps]}
    )
    return advance(PipelineRun.start("run-000001", spec))[0]


def run_to_end(run: PipelineRun, outcomes: dict[tuple[str, int], str]) -> PipelineRun:
    """Answer and end every submission with ``outcomes`` (default succeeded) until the run ends."""
    for _ in range(100):
        if run.state != RunState.running:
            return run
        for name, step in run.steps.items():
            for index, job in step.jobs.items():
                if job.job_id is None:
                    job_id = f"{name}-{index}-a{step.attempt}"
                    run = evolve(run, JobKnown(name, index, job.key, job_id))
                    outcome = outcomes.get((name, index), "succeeded")
                    run = evolve(run, JobEnded(name, index, job_id, outcome))
        run = advance(run)[0]
    raise AssertionError("the run did not end")


CHAIN = (
    {"name": "prepare"},
    {"name": "train", "depends": ["prepare"], "array": "0-3"},
    {"name": "evaluate", "depends": ["train"]},
    {"name": "report", "depends": {"evaluate": "finished"}},
)


def test_a_failed_run_runs_again_from_its_failed_steps_keeping_what_succeeded():
    failed = run_to_end(started(*CHAIN), {("train", 2): "failed"})
    assert failed.state == RunState.failed and failed.steps["evaluate"].state == StepState.skipped
    assert failed.steps["report"].state == StepState.succeeded  # evaluate "finished" by a skip
    again, taken = advance(retry(failed))

    assert again.state == RunState.running and again.attempt == 2 and again.ended is None
    assert again.steps["prepare"] == failed.steps["prepare"]  # kept: its job and outputs
    assert again.steps["report"] == failed.steps["report"]  # a step that succeeded is kept, whatever ran it
    train = again.steps["train"]
    assert train.attempt == 2 and train.state == StepState.running
    # the indices that succeeded keep their jobs; only index 2 is submitted again, under a new key
    assert {i: j.job_id for i, j in train.jobs.items() if j.job_id} == {
        0: "train-0-a1",
        1: "train-1-a1",
        3: "train-3-a1",
    }
    assert [d for d in taken if isinstance(d, Submit)] == [
        Submit("train", 2, "workflow:run-000001:train:2:2")
    ]
    assert again.steps["evaluate"].state == StepState.pending and again.steps["evaluate"].attempt == 2
    assert retried_steps(failed, again) == ["train", "evaluate"]

    done = run_to_end(again, {})
    assert done.state == RunState.succeeded and done.attempt == 2
    assert done.steps["evaluate"].jobs[0].key == "workflow:run-000001:evaluate:0:2"


def test_a_cancelled_run_runs_again_from_what_was_cancelled():
    run = started({"name": "a"}, {"name": "b", "depends": ["a"]})
    run = evolve(run, JobKnown("a", 0, run.steps["a"].jobs[0].key, "job-a"))
    cancelled = advance(evolve(run, Cancel("me")))[0]
    assert cancelled.state == RunState.cancelled
    again, taken = advance(retry(cancelled))
    assert not again.cancel_requested and again.steps["a"].attempt == 2
    assert [d.key for d in taken if isinstance(d, Submit)] == ["workflow:run-000001:a:0:2"]


def test_asking_twice_for_the_same_attempt_is_one_retry():
    failed = run_to_end(started({"name": "a"}), {("a", 0): "failed"})
    once = retry(failed, seen_attempt=1)
    assert retry(once, seen_attempt=1) is once  # the answer lost, asked again: the same run
    with pytest.raises(RetryRefused, match="still running"):
        retry(once, seen_attempt=2)  # but not a retry of an attempt still going
    with pytest.raises(RetryRefused, match="no attempt 5"):
        retry(failed, seen_attempt=5)


def test_a_running_or_succeeded_run_is_not_retried():
    with pytest.raises(RetryRefused, match="still running"):
        retry(started({"name": "a"}))
    with pytest.raises(RetryRefused, match="succeeded"):
        retry(run_to_end(started({"name": "a"}), {}))


def test_each_attempt_finishes_under_its_own_message_id():
    first = PipelineFinished(run_id="run-000001", state=RunState.failed)
    second = PipelineFinished(run_id="run-000001", state=RunState.succeeded, attempt=2)
    assert first.msg_id() == "pipeline:run-000001:finished"  # as before retries existed
    assert second.msg_id() == "pipeline:run-000001:finished:2"
