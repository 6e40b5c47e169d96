"""Hostile input never crashes the parsers: a payload is accepted or rejected with field errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from trainyard_contracts import (
    EXECUTOR_COMMAND_ADAPTER,
    JOB_EVENT_ADAPTER,
    AttemptRef,
    CancelAttempt,
    Capacity,
    ExecutorHeartbeat,
    IntakeReply,
    JobCancelled,
    JobCancelRequested,
    JobFailed,
    JobQueued,
    JobRecord,
    JobRejected,
    JobRequeued,
    JobRunning,
    JobScheduled,
    JobSpec,
    JobSubmitted,
    JobSucceeded,
    JobTimedOut,
    LogChunk,
    LogLine,
    ModelRegistered,
    ModelVersionRecord,
    QueueConfig,
    Rendezvous,
    SpecError,
    StartAttempt,
    lifecycle,
    parse_job_event,
    parse_spec,
)
from trainyard_contracts.spec import FieldError, field_errors

pytestmark = pytest.mark.unit

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=30,
)
FIELDS = [
    "name",
    "queue",
    "priority",
    "command",
    "shell",
    "image",
    "env",
    "resources",
    "replicas",
    "timeout",
    "retries",
    "source",
    "params",
    "outputs",
    "labels",
    "preemptible",
    "runtime_env",
    "gpus",
    "cmd",
]
spec_like = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=10)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(spec_like)
def test_any_mapping_is_a_spec_or_a_field_level_rejection(data):
    try:
        parse_spec(json.dumps(data))
    except SpecError as exc:
        assert exc.errors and all(e.field and e.message for e in exc.errors)


@settings(max_examples=300)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_are_a_spec_or_a_rejection(raw):
    try:
        parse_spec(raw)
    except SpecError as exc:
        assert exc.errors


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "type",
                "job_id",
                "attempt",
                "time",
                "spec",
                "errors",
                "executor_id",
                "reason",
                "next_attempt",
                "resources",
            ]
        ),
        json_values,
        max_size=8,
    )
)
def test_any_event_or_command_payload_parses_or_raises_validation_error(data):
    raw = json.dumps(data)
    for parse in (parse_job_event, EXECUTOR_COMMAND_ADAPTER.validate_json):
        try:
            parse(raw)
        except ValidationError:
            pass


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("name: x\ncommand: 'rm -rf /'\n", "command"),
        ("name: x\ncommand: []\n", "command"),
        ("name: x\ncommand: ['']\n", "command"),
        ("name: x\ncommand: ['true']\nresources: {cpu: -1}\n", "resources.cpu"),
        ("name: x\ncommand: ['true']\nresources: {memory: 999999Ti}\n", "resources.memory"),
        ("name: x\ncommand: ['true']\nreplicas: 0\n", "replicas"),
        ("name: x\ncommand: ['true']\noutputs: {model: m, path: ../../etc}\n", "outputs.path"),
        ("name: x\ncommand: ['true']\noutputs: {model: 'a/b', path: o}\n", "outputs.model"),
        ("name: 'résumé 🚀'\ncommand: ['true']\n", "name"),
        ("name: x\ncommand: ['true']\ntimeout: -5s\n", "timeout"),
        ("name: x\ncommand: ['" + "a" * 140_000 + "']\n", "command"),
    ],
)
def test_hostile_specs_name_the_field(text, field):
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert field in {e.field for e in info.value.errors}


def test_unicode_in_values_is_fine_and_yaml_bombs_are_refused():
    spec = parse_spec("name: ok\ncommand: ['echo', 'héllo 🚀']\nlabels: {team: 'ünï'}\n")
    assert spec.command[1] == "héllo 🚀"
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    # aliases share objects (no expansion in memory); the unknown fields are named, nothing more
    with pytest.raises(SpecError) as info:
        parse_spec(bomb + "c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n")
    assert {e.field for e in info.value.errors} >= {"a", "b", "c"}


# every message type, from a valid exemplar, mutated: the real parse entry points the services use


NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
SPEC = JobSpec(
    name="fuzz",
    command=["python", "train.py"],
    env={"K": "v", "S": "s3cr3t-value"},
    secret_env=["S"],
    outputs={"model": "m", "path": "out"},
    source={"repo": "https://example.org/r.git", "ref": "main"},
)
EVENTS = [
    JobSubmitted(job_id="j1", spec=SPEC, submitted_by="api"),
    JobRejected(job_id="j1", errors=[FieldError(field="command", message="no")], intake_id="x"),
    JobQueued(job_id="j1", queue="default"),
    JobScheduled(job_id="j1", executor_id="e1", resources=Capacity(cpu=1, memory=512)),
    JobRunning(job_id="j1", executor_id="e1", workdir="/w"),
    JobSucceeded(job_id="j1", executor_id="e1", outputs_uri="file:///o", duration_seconds=1.5),
    JobFailed(job_id="j1", exit_code=3, reason="exit code 3"),
    JobTimedOut(job_id="j1", reason="timeout after 10s"),
    JobCancelled(job_id="j1", by="api"),
    JobRequeued(job_id="j1", reason="retry", next_attempt=2, not_before=NOW),
    JobCancelRequested(job_id="j1", by="api"),
    ModelRegistered(job_id="j1", model_name="m", version=2, metrics={"acc": 0.9}, git_commit="a" * 40),
]
# (parse entry point, exemplar) for every message a service reads off the bus or a bucket
ENTRY_POINTS: list[tuple[str, Callable[[str | bytes], Any], dict[str, Any]]] = [
    *[(f"event:{e.type}", parse_job_event, e.model_dump(mode="json")) for e in EVENTS],
    (
        "command:start",
        EXECUTOR_COMMAND_ADAPTER.validate_json,
        StartAttempt(
            job_id="j1",
            attempt=1,
            executor_id="e1",
            spec=SPEC,
            rendezvous=Rendezvous(master_addr="10.0.0.1", master_port=29500, world_size=2, ranks=[0]),
        ).model_dump(mode="json"),
    ),
    (
        "command:cancel",
        EXECUTOR_COMMAND_ADAPTER.validate_json,
        CancelAttempt(job_id="j1", attempt=1, executor_id="e1").model_dump(mode="json"),
    ),
    (
        "log-chunk",
        LogChunk.model_validate_json,
        LogChunk(
            job_id="j1", attempt=1, seq=0, lines=[LogLine(stream="stdout", text="hi", time=NOW)]
        ).model_dump(mode="json"),
    ),
    (
        "heartbeat",
        ExecutorHeartbeat.model_validate_json,
        ExecutorHeartbeat(
            executor_id="e1",
            backend="local",
            capacity=Capacity(cpu=4, memory=8192),
            running=[AttemptRef(job_id="j1", attempt=1)],
        ).model_dump(mode="json"),
    ),
    (
        "job-record",
        JobRecord.model_validate_json,
        lifecycle.new_record("j1", SPEC, NOW, "api").model_dump(mode="json"),
    ),
    (
        "model-version",
        ModelVersionRecord.model_validate_json,
        ModelVersionRecord(name="m", version=1, job_id="j1", metrics={"a": 1.0}).model_dump(mode="json"),
    ),
    (
        "queue-config",
        QueueConfig.model_validate_json,
        QueueConfig(name="q", weight=2).model_dump(mode="json"),
    ),
    ("intake-reply", IntakeReply.model_validate_json, IntakeReply(accepted=True, job_id="j1").model_dump()),
    ("job-spec", parse_spec, SPEC.model_dump(mode="json")),
]
EVENT_TYPES = [e.type for e in EVENTS]


def _paths(node: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into a JSON document (the places a mutation can hit)."""
    out = [here] if here else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*here, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*here, i))
    return out


def _mutated(doc: Any, path: tuple[Any, ...], action: str, value: Any) -> Any:
    doc = json.loads(json.dumps(doc))
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "drop":
        del parent[last]
    elif action == "replace":
        parent[last] = value
    else:  # "extra": an unknown field next to it (dicts) or an extra item (lists)
        if isinstance(parent, dict):
            parent[f"unknown_{last}"] = value
        else:
            parent.append(value)
    return doc


def _accepted_or_field_errors(parse: Callable[[str | bytes], Any], raw: str | bytes) -> None:
    """The contract every entry point keeps: a value, or errors that each name a field and why."""
    try:
        parse(raw)
    except SpecError as exc:
        assert exc.errors and all(e.field and e.message for e in exc.errors)
    except ValidationError as exc:
        errors = field_errors(exc)
        assert errors and all(e.field and e.message for e in errors), errors


@pytest.mark.parametrize(("name", "parse", "exemplar"), ENTRY_POINTS, ids=[e[0] for e in ENTRY_POINTS])
def test_every_exemplar_parses(name, parse, exemplar):
    parse(json.dumps(exemplar))


@pytest.mark.parametrize(("name", "parse", "exemplar"), ENTRY_POINTS, ids=[e[0] for e in ENTRY_POINTS])
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_mutated_messages_are_accepted_or_rejected_field_by_field(name, parse, exemplar, data):
    path = data.draw(st.sampled_from(_paths(exemplar)), label="path")
    action = data.draw(st.sampled_from(["drop", "replace", "extra"]), label="action")
    value = data.draw(json_values | st.sampled_from(EVENT_TYPES), label="value")
    doc = _mutated(exemplar, path, action, value)
    _accepted_or_field_errors(parse, json.dumps(doc))


@pytest.mark.parametrize(("name", "parse", "exemplar"), ENTRY_POINTS, ids=[e[0] for e in ENTRY_POINTS])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_corrupted_bytes_are_accepted_or_rejected(name, parse, exemplar, data):
    raw = bytearray(json.dumps(exemplar).encode())
    cut = data.draw(st.integers(0, len(raw)), label="truncate at")
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), max_size=4))
    for index, byte in flips:
        raw[index] = byte
    _accepted_or_field_errors(parse, bytes(raw[: max(cut, 1)]))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(EVENTS), st.sampled_from(EVENT_TYPES))
def test_an_event_relabelled_as_another_type_is_rejected_or_reinterpreted_safely(event, other):
    doc = {**event.model_dump(mode="json"), "type": other}
    try:
        parsed = JOB_EVENT_ADAPTER.validate_json(json.dumps(doc))
    except ValidationError as exc:
        assert all(e.field for e in field_errors(exc))
    else:
        assert parsed.type == other and parsed.job_id == event.job_id


def test_submitted_event_of_a_spec_with_secrets_carries_them_masked():
    event = JobSubmitted(job_id="j1", spec=SPEC.redacted())
    assert "s3cr3t-value" not in event.model_dump_json() and event.spec.env["S"] == "***"


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        '{"a":' * 50_000,
        "a: " + "[" * 5000 + "]" * 5000,
        "name: x\ncommand: [" + "[" * 3000 + "]" * 3000 + "]",
        "name: x\ncommand: ['true']\nparams:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 3000)),
    ],
    ids=["deep-list", "deep-json-object", "deep-flow", "deep-in-a-field", "deep-block"],
)
def test_deeply_nested_documents_are_refused_not_crashed(text):
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert info.value.errors[0].field


@pytest.mark.parametrize(
    "parse", [parse_job_event, EXECUTOR_COMMAND_ADAPTER.validate_json, LogChunk.model_validate_json]
)
def test_deeply_nested_messages_are_validation_errors(parse):
    for raw in ["[" * 100_000, '{"type": "submitted", "job_id": "j", "spec": ' + '{"a":' * 50_000]:
        with pytest.raises(ValidationError):
            parse(raw)
