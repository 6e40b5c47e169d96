"""Triggers' decisions without a server: subject patterns, the filter, parameters from the
event, dedupe, the debounce window, and an event delivered twice."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from trainyard_contracts import SpecError
from trainyard_contracts.subjectpatterns import foreign_pattern_problem, pattern_within, subject_matches
from trainyard_contracts.triggers import TriggerRecord
from trainyard_contracts.workflow import TriggerSpec
from trainyard_workflow.trigger_core import (
    MAX_EVENT_BYTES,
    Bad,
    Event,
    Filtered,
    Invalid,
    Matched,
    compile_trigger,
    due_fires,
    evaluate,
    read_event,
    record_event,
    record_fired,
    record_suspended,
)

pytestmark = [pytest.mark.unit, pytest.mark.workflow]

NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
PIPELINE = {
    "name": "retrain",
    "params": {"version": "none", "prio": 0},
    "steps": [{"name": "train", "job": {"name": "t", "command": ["true"], "priority": "${{ params.prio }}"}}],
}


def spec(**fields) -> TriggerSpec:
    return TriggerSpec.model_validate({"name": "t", "subject": "datasets.>", "pipeline": PIPELINE, **fields})


def outcome(trigger: TriggerSpec, event) -> object:
    return evaluate(compile_trigger(trigger), read_event(json.dumps(event).encode()))


def event(seq: int, body: object = None) -> Event:
    return Event(stream="S", seq=seq, subject="datasets.digits.published", body=json.dumps(body).encode())


def test_subject_patterns_match_and_contain_as_nats_does():
    assert subject_matches("datasets.*.published", "datasets.digits.published")
    assert not subject_matches("datasets.*.published", "datasets.digits.x.published")
    assert subject_matches("datasets.>", "datasets.digits.published")
    assert not subject_matches("datasets.>", "datasets")
    assert pattern_within("datasets.digits.*", "datasets.>")
    assert pattern_within("datasets.*.published", "datasets.*.published")
    assert not pattern_within("datasets.>", "datasets.*")
    assert not pattern_within("datasets.*", "datasets.digits")
    assert not pattern_within(">", "datasets.>")


@pytest.mark.parametrize(
    "pattern", [">", "*.>", "trainyard.job.>", "$JS.API.>", "$KV.x.>", "_INBOX.>", "a.>.b"]
)
def test_an_operator_may_not_allow_the_whole_bus_or_its_internal_subjects(pattern):
    assert foreign_pattern_problem(pattern, "trainyard") is not None


def test_the_filter_and_parameters_are_read_from_the_event():
    trigger = spec(filter="kind == 'full'", params={"version": "meta.version", "prio": "priority"})
    assert outcome(trigger, {"kind": "partial"}) == Filtered()
    matched = outcome(trigger, {"kind": "full", "meta": {"version": "v7"}, "priority": 5})
    assert matched == Matched({"version": "v7", "prio": 5}, None)
    # null leaves the pipeline's default
    assert outcome(trigger, {"kind": "full"}) == Matched({}, None)


def test_an_event_whose_parameters_make_no_valid_pipeline_is_invalid_not_fired():
    trigger = spec(params={"prio": "priority", "version": "v"})
    assert isinstance(outcome(trigger, {"priority": "high"}), Invalid)  # priority must be a number
    assert isinstance(outcome(trigger, {"v": ["a", "list"]}), Invalid)
    assert isinstance(outcome(spec(dedupe_key="id"), {"other": 1}), Invalid)  # no dedupe value


def test_events_that_are_not_json_or_too_large_are_bad():
    assert isinstance(read_event(b"{nope"), Bad)
    assert isinstance(read_event(b"\xff"), Bad)
    assert isinstance(read_event(b" " * (MAX_EVENT_BYTES + 1)), Bad)
    assert isinstance(evaluate(compile_trigger(spec()), read_event(b"{nope")), Bad)


def test_an_expression_that_does_not_parse_names_its_field():
    with pytest.raises(SpecError) as caught:
        compile_trigger(spec(filter="kind ==", params={"version": "a[", "prio": "b"}))
    assert sorted(e.field for e in caught.value.errors) == ["filter", "params.version"]


def test_an_event_delivered_again_changes_nothing_and_a_fire_counts_once():
    record = TriggerRecord(spec=spec(params={"version": "v"}), created=NOW)
    matched = outcome(record.spec, {"v": "v1"})
    once, due = record_event(record, event(7, {"v": "v1"}), matched, NOW, run_exists=False)
    assert [f.params for f in due] == [{"version": "v1"}] and once.seen == {"S": 7}
    again, due_again = record_event(once, event(7, {"v": "v1"}), matched, NOW, run_exists=False)
    assert again == once and due_again == []
    fired, changed = record_fired(once, due[0].run_id)
    assert changed and fired.fired == 1 and fired.pending == []
    assert record_fired(fired, due[0].run_id) == (fired, False)


def test_a_suspended_trigger_counts_events_and_fires_none_of_them_after_a_resume():
    record = TriggerRecord(spec=spec(params={"version": "v"}), created=NOW)
    suspended, _ = record_suspended(record, True)
    assert record_suspended(suspended, True) == (suspended, None)  # asked twice: the same
    matched = outcome(record.spec, {"v": "v1"})
    dropped, due = record_event(suspended, event(7, {"v": "v1"}), matched, NOW, run_exists=False)
    assert due == [] and dropped.suspended_events == 1 and dropped.seen == {"S": 7} and dropped.fired == 0
    resumed, _ = record_suspended(dropped, False)
    # the event that came while suspended is looked at already: delivered again, it fires nothing
    assert record_event(resumed, event(7, {"v": "v1"}), matched, NOW, run_exists=False)[1] == []
    _, due = record_event(
        resumed, event(8, {"v": "v2"}), outcome(record.spec, {"v": "v2"}), NOW, run_exists=False
    )
    assert [f.params for f in due] == [{"version": "v2"}]


def test_the_same_dedupe_value_names_the_same_run_and_is_counted_once_it_exists():
    record = TriggerRecord(spec=spec(params={"version": "v"}, dedupe_key="v"), created=NOW)
    first, due1 = record_event(record, event(1, {"v": "a"}), outcome(record.spec, {"v": "a"}), NOW, False)
    fired, _ = record_fired(first, due1[0].run_id)
    second, due2 = record_event(fired, event(2, {"v": "a"}), outcome(record.spec, {"v": "a"}), NOW, True)
    assert due2 == [] and second.deduplicated == 1
    _, due3 = record_event(second, event(3, {"v": "b"}), outcome(record.spec, {"v": "b"}), NOW, False)
    assert len(due3) == 1 and due3[0].run_id != due1[0].run_id


def test_a_debounce_window_fires_once_when_it_closes_with_the_last_events_parameters():
    record = TriggerRecord(spec=spec(params={"version": "v"}, debounce_seconds=60), created=NOW)
    for seq in range(1, 5):
        body = {"v": f"v{seq}"}
        now = NOW + timedelta(seconds=10 * seq)
        record, due = record_event(record, event(seq, body), outcome(record.spec, body), now, False)
        assert due == []
    (window,) = record.pending
    assert window.params == {"version": "v4"} and window.events == 4 and record.debounced == 3
    assert window.due == NOW + timedelta(seconds=70)  # the first event's time plus the window
    assert due_fires(record, NOW + timedelta(seconds=69)) == []
    assert due_fires(record, NOW + timedelta(seconds=70)) == [window]
    # an event after the window closed opens a new one
    body = {"v": "late"}
    later, _ = record_event(
        record, event(9, body), outcome(record.spec, body), NOW + timedelta(seconds=80), False
    )
    assert len(later.pending) == 2 and later.pending[1].run_id != window.run_id


JOB = {
    "name": "retrain-digits",
    "command": ["python", "train.py", "--version=${{ params.version }}"],
    "params": {"version": "none", "rows": 0, "model-kind": "logreg"},
}


def test_a_trigger_runs_a_pipeline_or_a_job_never_both_nor_neither():
    with pytest.raises(ValueError, match="either pipeline"):
        TriggerSpec.model_validate({"name": "t", "subject": "datasets.>", "pipeline": PIPELINE, "job": JOB})
    with pytest.raises(ValueError, match="either pipeline"):
        TriggerSpec.model_validate({"name": "t", "subject": "datasets.>"})


def test_a_job_trigger_runs_the_job_as_a_one_step_pipeline_with_the_events_parameters():
    from trainyard_contracts.workflow import validate_pipeline
    from trainyard_workflow.triggers import validate_trigger

    document = {"name": "t", "subject": "datasets.>", "params": {"version": "v", "rows": "n"}, "job": JOB}
    trigger = validate_trigger(document, ["datasets.>"])
    matched = outcome(trigger, {"v": "v7", "n": 1797})
    assert isinstance(matched, Matched) and matched.params == {"version": "v7", "rows": 1797}
    pipeline = validate_pipeline(trigger.pipeline_document(), matched.params)
    [step] = pipeline.steps
    assert step.name == "job" and pipeline.name == "retrain-digits"
    assert step.job.command == ["python", "train.py", "--version=v7"]
    # the job's own params are the defaults the event replaces (a name no parameter can have stays)
    assert step.job.params == {"version": "v7", "rows": 1797, "model-kind": "logreg"}

    with pytest.raises(SpecError) as bad:
        validate_trigger({**document, "job": {**JOB, "command": []}}, ["datasets.>"])
    assert [e.field for e in bad.value.errors] == ["job.command"]
