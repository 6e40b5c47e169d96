"""The job spec: accepted shapes, and errors that name the field and what was expected."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainyard_contracts import JobSpec, SpecError, parse_spec
from trainyard_contracts.units import parse_duration, parse_memory_mb

pytestmark = pytest.mark.unit

FULL = """
name: digits-logreg
queue: research
priority: 10
command: ["python", "train.py", "--C", "1.0"]
image: trainyard/digits:1
env: {OMP_NUM_THREADS: "1"}
resources: {cpu: 2, memory: 4Gi, gpu: 1}
replicas: 2
timeout: 1h30m
retries: {limit: 3, backoff: 30s}
source: {repo: "https://example.com/ml.git", ref: main}
params: {C: 1.0, model: logreg, deep: false, layers: 3}
outputs: {model: digits-classifier, path: out/model}
labels: {team: vision}
preemptible: true
runtime_env: {pip: ["scikit-learn>=1.4"]}
"""


def test_full_spec_parses_with_units():
    spec = parse_spec(FULL)
    assert spec.resources.memory == 4096
    assert spec.timeout == 5400
    assert spec.retries.backoff == 30
    assert spec.outputs is not None and spec.outputs.path == "out/model"
    assert spec.argv() == ["python", "train.py", "--C", "1.0"]


def test_json_is_accepted_too():
    spec = parse_spec('{"name": "x", "command": ["true"]}')
    assert spec.queue == "default" and spec.resources.cpu == 1


def errors_of(text: str) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    return {e.field: e.message for e in info.value.errors}


def test_every_bad_field_is_named_with_what_was_expected():
    errors = errors_of(
        "name: x\ncommand: python train.py\nresources: {memory: lots, gpus: 1}\n"
        "timeout: 5 minutes\npriority: high\n"
    )
    assert set(errors) == {"command", "resources.memory", "resources.gpus", "timeout", "priority"}
    assert "argv list" in errors["command"]
    assert errors["resources.gpus"] == "unknown field (did you mean gpu?)"
    assert "512Mi" in errors["resources.memory"]
    assert "10m" in errors["timeout"]


def test_missing_required_fields():
    errors = errors_of("queue: default\n")
    assert errors == {"name": "required field is missing", "command": "required field is missing"}


def test_shell_must_be_explicit_and_single_string():
    spec = parse_spec('name: x\nshell: true\ncommand: ["echo hi && ls"]\n')
    assert spec.argv() == ["/bin/sh", "-c", "echo hi && ls"]
    assert "exactly one string" in str(errors_of('name: x\nshell: true\ncommand: ["a", "b"]\n'))


@pytest.mark.parametrize(
    ("path", "ok"),
    [("outputs", True), ("a/b/../c", True), ("/etc", False), ("../up", False), ("a/../../x", False)],
)
def test_outputs_path_stays_inside_the_workdir(path, ok):
    text = f"name: x\ncommand: ['true']\noutputs: {{model: m, path: '{path}'}}\n"
    if ok:
        parse_spec(text)
    else:
        assert "outputs.path" in errors_of(text)


def test_reserved_env_and_bad_names():
    errors = errors_of("name: 'bad name!'\ncommand: ['true']\nenv: {TRAINYARD_JOB_ID: x}\nqueue: Upper\n")
    assert set(errors) == {"name", "env", "queue"}


def test_not_a_mapping_and_not_yaml():
    assert errors_of("- a\n- b\n") == {"(document)": "expected a mapping of job spec fields"}
    assert "(document)" in errors_of("name: [unclosed\n")


@given(st.integers(min_value=0, max_value=10**6))
def test_plain_numbers_are_seconds_and_mebibytes(n):
    assert parse_duration(n) == n
    assert parse_memory_mb(n) == n


@given(st.integers(0, 99), st.integers(0, 59), st.integers(0, 59))
def test_compound_durations(h, m, s):
    assert parse_duration(f"{h}h{m}m{s}s") == h * 3600 + m * 60 + s


def test_spec_round_trips_through_json():
    spec = parse_spec(FULL)
    assert JobSpec.model_validate_json(spec.model_dump_json()) == spec


@pytest.mark.unit
@pytest.mark.parametrize(
    ("given", "field", "said"),
    [
        ("retries: 3", "retries", "retries is a mapping: {limit: 3}"),
        ("outputs: digits", "outputs", "outputs is a mapping: {model: digits}"),
        ("resources: [1, 2]", "resources", "resources is a mapping (key: value), not list"),
    ],
)
def test_a_scalar_where_a_mapping_belongs_says_what_was_meant(given, field, said):
    with pytest.raises(SpecError) as caught:
        parse_spec(f"name: a\ncommand: [x]\n{given}\n")
    assert [(e.field, e.message) for e in caught.value.errors] == [(field, said)]
