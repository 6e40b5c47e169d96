"""Hostile input never crashes the parsers: a payload is accepted or rejected with field errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from trainyard_contracts import EXECUTOR_COMMAND_ADAPTER, SpecError, parse_job_event, parse_spec

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
