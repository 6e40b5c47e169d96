"""Sweeps without a server: the document's field errors, what to launch now, pruning with Optuna's
median and ASHA pruners, the end of a sweep, and a record replayed giving the same answers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from trainyard_contracts import SpecError
from trainyard_contracts.sweeps import (
    MAX_INTERMEDIATE,
    PRUNED_REASON,
    SWEEP_LABEL,
    TRIAL_LABEL,
    SweepRecord,
    SweepState,
    TrialState,
    trial_job,
    validate_sweep,
)
from trainyard_workflow import sweep_engine
from trainyard_workflow.sweep_core import (
    CancelJob,
    CancelSweep,
    Engine,
    JobEnded,
    JobKnown,
    Reported,
    SubmitTrial,
    SweepEnded,
    advance,
    room,
    unanswered,
)

pytestmark = [pytest.mark.unit, pytest.mark.sweep]

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
OPTUNA = Engine(sweep_engine.ask, sweep_engine.should_prune)


def doc(**over):
    base = {
        "name": "cem",
        "job": {"name": "cem", "command": ["python3", "train.py", "--lr", "${{ params.lr }}"]},
        "space": {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "width": {"type": "int", "low": 8, "high": 64, "step": 8},
            "act": {"type": "categorical", "choices": ["relu", "tanh"]},
        },
        "objective": {"metric": "mean_return", "direction": "maximize"},
        "max_trials": 6,
        "max_parallel": 2,
        "max_failed": 1,
    }
    return {**base, **over}


def record(**over) -> SweepRecord:
    return SweepRecord(sweep_id="sweep-test-1", spec=validate_sweep(doc(**over)))


def fields(document) -> set[str]:
    with pytest.raises(SpecError) as caught:
        validate_sweep(document)
    return {e.field for e in caught.value.errors}


def test_field_errors_name_the_field():
    assert fields(doc(space={"lr": {"type": "float", "low": 1, "high": 0.5}})) == {"space.lr.high"}
    assert fields(doc(space={"lr": {"type": "float", "low": 0, "high": 1, "log": True}})) == {"space.lr.low"}
    assert "space.lr.float.hgh" in fields(doc(space={"lr": {"type": "float", "low": 0, "hgh": 1}}))
    assert fields(doc(objective={"metric": "bad name", "direction": "maximize"})) == {"objective.metric"}
    assert fields(doc(objective={"metric": "x", "direction": "up"})) == {"objective.direction"}
    assert fields(doc(max_trials=0)) == {"max_trials"}
    assert fields(doc(sampler={"type": "annealing"})) == {"sampler.type"}
    assert fields(doc(pruner={"type": "hyperband"})) == {"pruner.type"}
    # the grid sampler needs a step on floats
    grid = doc(sampler={"type": "grid"}, space={"lr": {"type": "float", "low": 0.1, "high": 0.2}})
    assert fields(grid) == {"space.lr.step"}
    # the job template is checked with a sample point: an unknown parameter, a bad job field
    assert fields(doc(job={"name": "x", "command": ["${{ params.nope }}"]})) == {"job.command.0"}
    assert fields(doc(job={"name": "x", "command": ["true"], "resources": {"cpu": -1}})) == {
        "job.resources.cpu"
    }


def test_trial_job_substitutes_params_and_labels_the_trial():
    spec = validate_sweep(doc(job={"name": "t", "command": ["run"], "env": {"WIDTH": "${{ params.width }}"}}))
    job = trial_job(spec, {"lr": 0.01, "width": 16, "act": "tanh"}, "sweep-abc", 3)
    assert job.env["WIDTH"] == "16"
    assert job.params == {"lr": 0.01, "width": 16, "act": "tanh"}
    assert job.labels[SWEEP_LABEL] == "sweep-abc" and job.labels[TRIAL_LABEL] == "3"


def test_launches_up_to_max_parallel_then_one_per_ended_trial():
    rec, decisions = advance(record(), [], NOW, OPTUNA)
    assert decisions == [SubmitTrial(0), SubmitTrial(1)]
    assert [t.key for t in rec.trials] == ["sweep:sweep-test-1:0", "sweep:sweep-test-1:1"]
    assert unanswered(rec) == [0, 1]
    for trial in rec.trials:  # every value inside the space
        assert 1e-4 <= trial.params["lr"] <= 1e-1 and trial.params["width"] % 8 == 0
        assert trial.params["act"] in ("relu", "tanh")
    again, nothing = advance(rec, [], NOW, OPTUNA)
    assert nothing == [] and again == rec  # nothing more until a trial ends
    rec, _ = advance(rec, [JobKnown(0, "job-a"), JobKnown(1, "job-b")], NOW, OPTUNA)
    rec, decisions = advance(rec, [JobEnded(0, "job-a", "succeeded", value=10.0)], NOW, OPTUNA)
    assert decisions == [SubmitTrial(2)]
    assert rec.trials[0].state == TrialState.complete and rec.best == 0


def test_the_same_record_asks_the_same_points():
    a, _ = advance(record(), [], NOW, OPTUNA)
    b, _ = advance(record(), [], NOW, OPTUNA)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]


def test_tpe_with_constant_liar_runs_after_startup_trials():
    rec = record(max_trials=12, max_parallel=3, sampler={"type": "tpe", "n_startup_trials": 2, "seed": 7})
    rec, _ = advance(rec, [], NOW, OPTUNA)
    number = 0
    while rec.state == SweepState.running:
        trial = rec.trials[number]
        value = -abs(trial.params["lr"] - 0.01)
        rec, _ = advance(
            rec,
            [JobKnown(number, f"j{number}"), JobEnded(number, f"j{number}", "succeeded", value)],
            NOW,
            OPTUNA,
        )
        number += 1
    assert rec.state == SweepState.succeeded and len(rec.trials) == 12
    assert rec.ranked()[0].value == max(t.value for t in rec.trials if t.value is not None)


def test_grid_launches_every_point_once_then_ends():
    space = {"a": {"type": "int", "low": 1, "high": 2}, "b": {"type": "categorical", "choices": ["x", "y"]}}
    rec = record(
        sampler={"type": "grid"},
        space=space,
        max_trials=10,
        max_parallel=10,
        job={"name": "g", "command": ["true"]},
    )
    rec, decisions = advance(rec, [], NOW, OPTUNA)
    assert [t.params for t in rec.trials] == [
        {"a": 1, "b": "x"},
        {"a": 1, "b": "y"},
        {"a": 2, "b": "x"},
        {"a": 2, "b": "y"},
    ]
    facts = [f for n in range(4) for f in (JobKnown(n, f"j{n}"), JobEnded(n, f"j{n}", "succeeded", float(n)))]
    rec, decisions = advance(rec, facts, NOW, OPTUNA)
    assert rec.state == SweepState.succeeded and rec.best == 3
    assert decisions == [SweepEnded(SweepState.succeeded, "4 trials ended")]


def test_a_trial_that_reports_nothing_fails_and_max_failed_ends_the_sweep():
    rec, _ = advance(record(max_failed=1), [], NOW, OPTUNA)
    rec, _ = advance(rec, [JobKnown(0, "a"), JobKnown(1, "b")], NOW, OPTUNA)
    rec, decisions = advance(rec, [JobEnded(0, "a", "succeeded", value=None)], NOW, OPTUNA)
    assert rec.trials[0].state == TrialState.failed and "reported no 'mean_return'" in rec.trials[0].reason
    assert decisions == [SubmitTrial(2)]  # one failure is allowed
    rec, _ = advance(rec, [JobKnown(2, "c")], NOW, OPTUNA)
    rec, decisions = advance(rec, [JobEnded(2, "c", "failed", reason="exit code 1")], NOW, OPTUNA)
    assert rec.state == SweepState.failed and rec.reason == "2 trials failed (max_failed: 1)"
    # the trial still running is cancelled with the sweep
    assert CancelJob(1, "b", "cancelled") in decisions
    assert rec.trials[1].state == TrialState.cancelled
    # its outcome, arriving later, changes nothing
    after, more = advance(rec, [JobEnded(1, "b", "cancelled")], NOW, OPTUNA)
    assert after == rec and more == []


def test_cancel_ends_open_trials_and_stops_their_jobs():
    rec, _ = advance(record(), [], NOW, OPTUNA)
    rec, _ = advance(rec, [JobKnown(0, "a")], NOW, OPTUNA)
    rec, decisions = advance(rec, [CancelSweep("alice")], NOW, OPTUNA)
    assert rec.state == SweepState.cancelled and rec.reason == "cancelled by alice"
    assert decisions == [CancelJob(0, "a", "cancelled")]  # trial 1's job is not known: nothing to stop
    assert room(rec) == 0


def test_an_outcome_of_another_job_is_not_the_trials():
    rec, _ = advance(record(), [], NOW, OPTUNA)
    rec, _ = advance(rec, [JobKnown(0, "a")], NOW, OPTUNA)
    after, decisions = advance(rec, [JobEnded(0, "other", "succeeded", 1.0)], NOW, OPTUNA)
    assert after == rec and decisions == []


def _run_trial(rec, number, values, engine=OPTUNA):
    job = f"j{number}"
    rec, decisions = advance(rec, [JobKnown(number, job)], NOW, engine)
    for step, value in enumerate(values):
        rec, decided = advance(rec, [Reported(number, job, ((step, value),))], NOW, engine)
        decisions += decided
        if rec.trials[number].state == TrialState.pruning:
            break
    return rec, decisions


@pytest.mark.parametrize(
    "pruner",
    [{"type": "median", "n_startup_trials": 2}, {"type": "asha", "min_resource": 1, "reduction_factor": 2}],
)
def test_a_worse_trial_is_pruned_and_ends_pruned(pruner):
    rec = record(max_parallel=1, max_trials=4, pruner=pruner, sampler={"type": "random", "seed": 1})
    rec, _ = advance(rec, [], NOW, OPTUNA)
    for number in (0, 1):  # two good trials to compare with
        rec, _ = _run_trial(rec, number, [10.0 + s for s in range(8)])
        rec, _ = advance(rec, [JobEnded(number, f"j{number}", "succeeded", 17.0)], NOW, OPTUNA)
    rec, decisions = _run_trial(rec, 2, [0.0] * 8)  # far worse
    trial = rec.trials[2]
    assert trial.state == TrialState.pruning and trial.reason.startswith(PRUNED_REASON)
    assert CancelJob(2, "j2", PRUNED_REASON) in decisions
    if pruner["type"] == "asha":
        assert any(key.startswith("completed_rung_") for key in trial.rungs)
    # its job ends cancelled: the trial is pruned, not failed, and the next one starts
    rec, decisions = advance(rec, [JobEnded(2, "j2", "cancelled", reason=PRUNED_REASON)], NOW, OPTUNA)
    assert rec.trials[2].state == TrialState.pruned
    assert decisions == [SubmitTrial(3)]


def test_intermediate_values_are_bounded_and_keep_the_latest():
    rec, _ = advance(record(), [], NOW, OPTUNA)
    points = tuple((step, float(step)) for step in range(500))
    rec, _ = advance(rec, [JobKnown(0, "a"), Reported(0, "a", points)], NOW, OPTUNA)
    kept = rec.trials[0].intermediate
    assert len(kept) == MAX_INTERMEDIATE and max(kept) == 499 and rec.trials[0].last_step == 499
    assert sorted(kept)[: MAX_INTERMEDIATE - 1] == list(range(MAX_INTERMEDIATE - 1))


def test_the_largest_sweep_record_fits_a_nats_message():
    """max_trials trials, each with MAX_INTERMEDIATE values and long parameters: under 1 MiB, the
    server's default max_payload (the record is one KV value)."""
    from trainyard_contracts.sweeps import MAX_TRIALS, Trial

    rec = record(max_trials=MAX_TRIALS)
    trials = [
        Trial(
            number=n,
            params={"lr": 0.012345678901234567, "width": 64, "act": "relu" * 8},
            key=f"sweep:{rec.sweep_id}:{n}",
            job_id="0mx7gilttsdovc5g",
            state=TrialState.complete,
            value=123.456789012345,
            intermediate={step * 1000: 1234.56789012345 for step in range(MAX_INTERMEDIATE)},
            last_step=10**9,
            rungs={f"completed_rung_{k}": 1.2345678901234 for k in range(4)},
            reason="pruned at step 1000000000",
        )
        for n in range(MAX_TRIALS)
    ]
    full = rec.model_copy(update={"trials": trials})
    assert len(full.model_dump_json().encode()) < 1024 * 1024


def test_a_job_is_a_trial_only_when_submitted_under_the_trials_key():
    """Labels are anyone's to write: a team's job labelled as another sweep's trial is no trial;
    the trial's own job (through the intake under sweep:<id>:<n>) is."""
    from trainyard_contracts import JobSpec
    from trainyard_contracts.ids import WORKFLOW_INTAKE, idempotency_slot
    from trainyard_contracts.lifecycle import new_record
    from trainyard_workflow.sweeps import trial_of

    spec = JobSpec.model_validate(
        {"name": "t", "command": ["true"], "labels": {SWEEP_LABEL: "sweep-test-1", TRIAL_LABEL: "2"}}
    )
    record = new_record("job-aaaaaa", spec, NOW, "team-a")
    assert trial_of(record) is None  # no key: an HTTP submission
    forged = record.model_copy(
        update={"idempotency_slot": idempotency_slot("http.tok", "sweep:sweep-test-1:2")}
    )
    assert trial_of(forged) is None
    for namespace in ("intake", "intake.tok"):  # another bus sender, the trial's key
        over_bus = record.model_copy(
            update={"idempotency_slot": idempotency_slot(namespace, "sweep:sweep-test-1:2")}
        )
        assert trial_of(over_bus) is None
    other = record.model_copy(
        update={"idempotency_slot": idempotency_slot(WORKFLOW_INTAKE, "sweep:sweep-test-1:3")}
    )
    assert trial_of(other) is None
    own = record.model_copy(
        update={"idempotency_slot": idempotency_slot(WORKFLOW_INTAKE, "sweep:sweep-test-1:2")}
    )
    assert trial_of(own) == ("sweep-test-1", 2)
