"""The pure core of a pipeline run: which steps are submitted, skipped, ended; arrays under %N."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainyard_contracts.runs import PipelineRun, RunState, StepState
from trainyard_contracts.workflow import PipelineSpec
from trainyard_workflow.core import (
    Cancel,
    EndStep,
    JobEnded,
    JobKnown,
    Submit,
    advance,
    dependency_verdict,
    evolve,
    idempotency_key,
    job_spec_for,
    step_of,
    unanswered,
)

pytestmark = [pytest.mark.unit, pytest.mark.workflow]
RUN = "run-000001"


def pipeline(*steps: dict) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {"name": "p", "steps": [{"job": {"name": s["name"], "command": ["true"]}, **s} for s in steps]}
    )


def started(*steps: dict) -> PipelineRun:
    return PipelineRun.start(RUN, pipeline(*steps))


def answer(run: PipelineRun, submits: list, job_ids: dict) -> PipelineRun:
    for s in submits:
        job_ids[(s.step, s.index)] = f"job-{s.step}-{s.index}"
        run = evolve(run, JobKnown(s.step, s.index, s.key, job_ids[(s.step, s.index)]))
    return run


def end(run: PipelineRun, step: str, outcome: str, index: int = 0) -> PipelineRun:
    return evolve(run, JobEnded(step, index, f"job-{step}-{index}", outcome))


def submits(decisions) -> list[Submit]:
    return [d for d in decisions if isinstance(d, Submit)]


def test_a_chain_submits_each_step_when_its_dependency_succeeded():
    run, taken = advance(started({"name": "a"}, {"name": "b", "depends": ["a"]}))
    assert [(s.step, s.key) for s in submits(taken)] == [("a", idempotency_key(RUN, "a", 0, 1))]
    run = answer(run, submits(taken), {})
    run, taken = advance(end(run, "a", "succeeded"))
    assert [s.step for s in submits(taken)] == ["b"]
    run = answer(run, submits(taken), {})
    run, taken = advance(end(run, "b", "succeeded"))
    assert run.state == RunState.succeeded and run.steps["b"].state == StepState.succeeded


def test_a_failing_branch_skips_its_dependents_and_fails_the_run():
    run, taken = advance(
        started(
            {"name": "prep"}, {"name": "train", "depends": ["prep"]}, {"name": "eval", "depends": ["train"]}
        )
    )
    run = answer(run, submits(taken), {})
    run, taken = advance(end(run, "prep", "succeeded"))
    run = answer(run, submits(taken), {})
    run, taken = advance(end(run, "train", "failed"))
    assert run.steps["eval"].state == StepState.skipped
    assert "train (failed, needed succeeded)" in (run.steps["eval"].reason or "")
    assert run.state == RunState.failed
    assert not submits(taken)


def test_a_handler_on_failure_runs_and_the_handled_failure_does_not_fail_the_run():
    run, taken = advance(
        started(
            {"name": "train"},
            {"name": "on-fail", "depends": {"train": "failed"}},
            {"name": "publish", "depends": ["train"]},
            {"name": "cleanup", "depends": {"publish": "finished"}},
        )
    )
    run = answer(run, submits(taken), {})
    run, taken = advance(end(run, "train", "failed"))
    # publish is skipped, and a skipped step has finished: cleanup runs
    assert sorted(s.step for s in submits(taken)) == ["cleanup", "on-fail"]
    assert run.steps["publish"].state == StepState.skipped
    run = answer(run, submits(taken), {})
    run = end(end(run, "on-fail", "succeeded"), "cleanup", "succeeded")
    run, _ = advance(run)
    assert run.state == RunState.succeeded


def test_an_array_keeps_at_most_its_limit_running_and_ends_failed_if_one_index_failed():
    run, taken = advance(started({"name": "sweep", "array": "0-4%2"}))
    assert [s.index for s in submits(taken)] == [0, 1]
    run = answer(run, submits(taken), {})
    run, taken = advance(end(run, "sweep", "succeeded", 0))
    assert [s.index for s in submits(taken)] == [2]
    run = answer(run, submits(taken), {})
    for index, outcome in [(1, "failed"), (2, "succeeded")]:
        run, taken = advance(end(run, "sweep", outcome, index))
        run = answer(run, submits(taken), {})
    run, taken = advance(end(run, "sweep", "succeeded", 3))
    run, taken = advance(end(run, "sweep", "succeeded", 4))
    assert run.steps["sweep"].state == StepState.failed and "index 1" in (run.steps["sweep"].reason or "")
    assert run.state == RunState.failed


def test_cancel_ends_every_open_step_and_names_the_jobs_to_cancel():
    run, taken = advance(started({"name": "a"}, {"name": "b", "depends": ["a"]}))
    run = answer(run, submits(taken), {})
    run, taken = advance(evolve(run, Cancel("me")))
    assert run.state == RunState.cancelled
    assert {n: s.state for n, s in run.steps.items()} == {"a": StepState.cancelled, "b": StepState.cancelled}
    assert run.open_job_ids() == ["job-a-0"]
    assert not submits(taken)


def test_a_restart_resends_only_what_was_recorded_under_the_same_key():
    run, taken = advance(started({"name": "a", "array": "0-2"}))
    run = evolve(run, JobKnown("a", 0, taken[0].key, "job-a-0"))
    # the process dies here; the record says what is unanswered, under the keys it was recorded with
    again = unanswered(run)
    assert [(s.index, s.key) for s in again] == [(i, idempotency_key(RUN, "a", i, 1)) for i in (1, 2)]
    _, nothing_new = advance(run)
    assert nothing_new == []


def test_facts_that_no_longer_apply_leave_the_record_alone():
    run, taken = advance(started({"name": "a"}))
    run = answer(run, submits(taken), {})
    assert evolve(run, JobKnown("a", 0, taken[0].key, "other")) == run  # id already known
    assert evolve(run, JobEnded("a", 0, "not-ours", "succeeded")) == run  # not the step's job
    assert evolve(run, JobEnded("nope", 0, "job-a-0", "succeeded")) == run  # no such step
    ended = end(run, "a", "failed")
    assert end(ended, "a", "succeeded") == ended  # one outcome per job


def test_a_job_spec_is_labelled_with_its_run_step_index_and_attempt():
    run = started(
        {"name": "train", "array": "0-1", "job": {"name": "t", "command": ["x"], "labels": {"team": "v"}}}
    )
    spec = job_spec_for(run, "train", 1)
    assert spec.labels["team"] == "v"
    ref = step_of(spec.labels)
    assert ref is not None and (ref.run_id, ref.step, ref.index) == (RUN, "train", 1)
    assert step_of({"team": "v"}) is None


def test_dependency_verdicts():
    assert dependency_verdict("succeeded", StepState.running) is None
    assert dependency_verdict("finished", StepState.skipped) is True
    assert dependency_verdict("finished", StepState.cancelled) is False
    assert dependency_verdict("failed", StepState.succeeded) is False


# -- properties: any DAG, any outcomes -----------------------------------------------------------

NAMES = [f"s{i}" for i in range(6)]


@st.composite
def dags(draw):
    count = draw(st.integers(1, 6))
    steps = []
    for i in range(count):
        earlier = NAMES[:i]
        deps = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        step = {"name": NAMES[i]}
        if deps and draw(st.booleans()):
            step["depends"] = {d: draw(st.sampled_from(["succeeded", "failed", "finished"])) for d in deps}
        elif deps:
            step["depends"] = deps
        if draw(st.booleans()):
            step["array"] = f"0-{draw(st.integers(0, 4))}%{draw(st.integers(1, 3))}"
        steps.append(step)
    return steps


@settings(max_examples=150, deadline=None)
@given(dags(), st.randoms(use_true_random=False), st.booleans())
def test_any_run_ends_with_no_job_submitted_twice_and_every_rule_kept(steps, rnd, cancel_midway):
    spec = pipeline(*steps)
    run = PipelineRun.start(RUN, spec)
    sent: list[str] = []
    in_flight: dict[tuple[str, int], str] = {}
    for turn in range(500):
        run, taken = advance(run)
        for decision in taken:
            if isinstance(decision, Submit):
                _check_dependencies_met(run, spec, decision.step)
            if isinstance(decision, EndStep) and decision.state == StepState.skipped:
                assert "can no longer be met" in (decision.reason or "")
        for s in unanswered(run):  # a restart between any two turns sends these again
            if s.key not in sent:
                sent.append(s.key)
            job_id = f"job-{s.step}-{s.index}"
            run = evolve(run, JobKnown(s.step, s.index, s.key, job_id))
            in_flight[(s.step, s.index)] = job_id
        _check_array_limits(run, spec)
        if run.state != RunState.running:
            break
        if cancel_midway and turn == 2:
            run = evolve(run, Cancel())
            continue
        if in_flight:
            (step, index), job_id = rnd.choice(sorted(in_flight.items()))
            del in_flight[(step, index)]
            run = evolve(run, JobEnded(step, index, job_id, rnd.choice(["succeeded", "failed"])))
    assert run.state != RunState.running
    assert len(sent) == len(set(sent))  # one key per (run, step, index, attempt), sent once
    assert all(s.state not in (StepState.pending, StepState.running) for s in run.steps.values())


def _check_dependencies_met(run: PipelineRun, spec: PipelineSpec, step: str) -> None:
    for dep, condition in spec.step(step).conditions().items():
        assert dependency_verdict(condition, run.steps[dep].state) is True


def _check_array_limits(run: PipelineRun, spec: PipelineSpec) -> None:
    for s in spec.steps:
        if s.array and "%" in s.array:
            limit = int(s.array.split("%")[1])
            open_jobs = sum(1 for j in run.steps[s.name].jobs.values() if j.outcome is None)
            assert open_jobs <= limit


@pytest.mark.security
def test_a_job_is_a_step_only_when_the_intake_took_it_under_the_steps_key():
    """Labels are anyone's to write: a team's job labelled as another run's step (sent over HTTP,
    or under another key) is no step; the step's own job (the bus intake, its key) is."""
    from datetime import UTC, datetime

    from trainyard_contracts import JobSpec
    from trainyard_contracts.ids import WORKFLOW_INTAKE, idempotency_slot
    from trainyard_contracts.lifecycle import new_record
    from trainyard_workflow.core import idempotency_key, submitted_under

    key = idempotency_key("run-aaaa", "train", 0, 1)
    record = new_record(
        "job-forged", JobSpec(name="t", command=["true"]), datetime(2026, 12, 3, tzinfo=UTC), "b"
    )
    assert not submitted_under(record, key)  # no key at all
    over_http = record.model_copy(update={"idempotency_slot": idempotency_slot("http.tok", key)})
    assert not submitted_under(over_http, key)
    for namespace in ("intake", "intake.tok"):  # another bus sender, the step's key
        over_bus = record.model_copy(update={"idempotency_slot": idempotency_slot(namespace, key)})
        assert not submitted_under(over_bus, key)
    another = record.model_copy(
        update={
            "idempotency_slot": idempotency_slot(WORKFLOW_INTAKE, idempotency_key("run-aaaa", "train", 0, 2))
        }
    )
    assert not submitted_under(another, key)
    own = record.model_copy(update={"idempotency_slot": idempotency_slot(WORKFLOW_INTAKE, key)})
    assert submitted_under(own, key)
