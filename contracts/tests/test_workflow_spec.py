"""Pipeline documents, array syntax, schedules and triggers: accepted shapes and field errors."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainyard_contracts import SpecError
from trainyard_contracts.arrays import MAX_ARRAY_SIZE, ArraySyntaxError, parse_array
from trainyard_contracts.workflow import (
    ArraySpec,
    Condition,
    PipelineSpec,
    ScheduleSpec,
    find_cycle,
    parse_param_assignments,
    parse_pipeline,
)

pytestmark = [pytest.mark.unit, pytest.mark.workflow]

RETRAIN = """
name: retrain
params: {C: 1.0, data: digits}
steps:
  - name: prepare
    job: {name: prepare, command: ["python", "prepare.py", "--data", "${{ params.data }}"]}
  - name: train
    depends: [prepare]
    array: "0-2"
    job: {name: train, command: ["python", "train.py"], priority: "${{ params.prio }}"}
  - name: evaluate
    depends: {train: finished}
    job: {name: evaluate, command: ["python", "evaluate.py"]}
"""


def errors_of(text: str, params=None) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_pipeline(text, params)
    return {e.field: e.message for e in info.value.errors}


def test_a_pipeline_parses_with_its_parameters_substituted_and_typed():
    pipeline = parse_pipeline(RETRAIN, {"prio": 5, "data": "iris"})
    assert [s.name for s in pipeline.steps] == ["prepare", "train", "evaluate"]
    assert pipeline.step("prepare").job.command[-1] == "iris"
    assert pipeline.step("train").job.priority == 5  # a whole reference keeps the value's type
    assert pipeline.step("train").conditions() == {"prepare": Condition.succeeded}
    assert pipeline.step("evaluate").conditions() == {"train": Condition.finished}
    assert pipeline.params == {"C": 1.0, "data": "iris", "prio": 5}


def test_an_unknown_parameter_names_the_field_it_is_in():
    errors = errors_of(RETRAIN)
    assert list(errors) == ["steps.1.job.priority"]
    assert "unknown parameter 'prio'" in errors["steps.1.job.priority"]


@pytest.mark.parametrize(
    ("steps", "field", "words"),
    [
        ("[{name: a, job: {name: a, command: [x]}, depends: [b]}]", "steps.0.depends", "not a step"),
        ("[{name: a, job: {name: a, command: [x]}, depends: [a]}]", "steps.0.depends", "itself"),
        (
            "[{name: a, job: {name: a, command: [x]}}, {name: a, job: {name: a, command: [x]}}]",
            "steps.1.name",
            "named twice",
        ),
        (
            "[{name: a, job: {name: a, command: [x]}, depends: [b]},"
            " {name: b, job: {name: b, command: [x]}, depends: {a: succeeded}}]",
            "steps",
            "cycle: a -> b -> a",
        ),
        (
            "[{name: a, job: {name: a, command: [x]}, depends: {b: done}}]",
            "steps.0.depends",
            "b: expected one of succeeded, failed, finished",
        ),
        ("[{name: a, job: {name: a, command: [x]}, array: '5-1'}]", "steps.0.array", "ends before it starts"),
        ("[{name: a, job: {name: a, command: python x}}]", "steps.0.job.command", "argv list"),
        ("[{name: a, jobb: {name: a, command: [x]}}]", "steps.0.jobb", "unknown field"),
    ],
)
def test_each_bad_field_is_named_with_what_was_expected(steps, field, words):
    errors = errors_of(f"name: p\nsteps: {steps}\n")
    assert field in errors, errors
    assert words in errors[field]


def test_a_pipeline_needs_a_step():
    assert "steps" in errors_of("name: p\nsteps: []\n")


@pytest.mark.parametrize(
    ("text", "indices", "limit"),
    [
        ("5", (5,), None),
        ("0-3", (0, 1, 2, 3), None),
        ("0-99%8", tuple(range(100)), 8),
        ("0-10:5", (0, 5, 10), None),
        ("1,3,5-7%2", (1, 3, 5, 6, 7), 2),
        ("3,1,3", (1, 3), None),
    ],
)
def test_slurm_array_syntax(text, indices, limit):
    parsed = parse_array(text)
    assert parsed.indices == indices and parsed.max_running == limit


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "Slurm array syntax"),
        ("0-9%0", "at least 1"),
        ("0-9%x", "whole number"),
        ("a-b", "not an index or a range"),
        ("0-9:0", "step"),
        (f"0-{MAX_ARRAY_SIZE}", f"more than {MAX_ARRAY_SIZE}"),
        ("0-2000000", "above the largest"),
    ],
)
def test_bad_array_syntax_says_what_was_expected(text, words):
    with pytest.raises(ArraySyntaxError, match=words):
        parse_array(text)


@given(
    st.lists(st.tuples(st.integers(0, 500), st.integers(0, 50), st.integers(1, 7)), min_size=1, max_size=5)
)
def test_array_indices_are_exactly_the_union_of_the_ranges(parts):
    text = ",".join(f"{a}-{a + n}:{s}" for a, n, s in parts)
    expected = sorted({i for a, n, s in parts for i in range(a, a + n + 1, s)})
    assert list(parse_array(text).indices) == expected


def test_an_array_object_validates_its_syntax():
    assert ArraySpec.model_validate({"array": "0-3%2", "job": {"name": "a", "command": ["x"]}})
    with pytest.raises(ValueError, match="array"):
        ArraySpec.model_validate({"array": "0-3%", "job": {"name": "a", "command": ["x"]}})


def test_schedule_fields_are_checked():
    pipeline = {"name": "p", "steps": [{"name": "a", "job": {"name": "a", "command": ["x"]}}]}
    good = ScheduleSpec.model_validate(
        {"name": "nightly", "cron": "0 3 * * *", "timezone": "Europe/Paris", "pipeline": pipeline}
    )
    assert good.concurrency == "allow"
    for bad, words in [
        ({"cron": "0 3 * *"}, "5 cron fields"),
        ({"timezone": "Mars/Base"}, "unknown time zone"),
    ]:
        with pytest.raises(ValueError, match=words):
            ScheduleSpec.model_validate({"name": "n", "cron": "0 3 * * *", "pipeline": pipeline, **bad})


def test_param_assignments_take_their_types():
    assert parse_param_assignments(["C=0.5", "n=3", "deep=true", "name=x=y"]) == {
        "C": 0.5,
        "n": 3,
        "deep": True,
        "name": "x=y",
    }
    with pytest.raises(SpecError, match="key=value"):
        parse_param_assignments(["novalue"])


@given(st.dictionaries(st.sampled_from("abcdef"), st.lists(st.sampled_from("abcdef"), max_size=3)))
def test_find_cycle_returns_a_real_cycle_or_the_graph_is_acyclic(graph):
    cycle = find_cycle(graph)
    if cycle:
        assert cycle[0] == cycle[-1]
        assert all(b in graph.get(a, []) for a, b in itertools.pairwise(cycle))
    else:  # a topological order exists
        order, seen = [], set()

        def visit(node, stack=()):
            assert node not in stack
            if node in seen:
                return
            for dep in graph.get(node, []):
                visit(dep, (*stack, node))
            seen.add(node)
            order.append(node)

        for node in graph:
            visit(node)


class _CountedSteps(list):  # type: ignore[type-arg]
    """The steps, counting the walks over them."""

    walks = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        _CountedSteps.walks += 1
        return super().__iter__()


def test_a_step_is_looked_up_by_name_without_a_walk_over_the_steps():
    steps = [{"name": f"s{i}", "job": {"name": f"s{i}", "command": ["true"]}} for i in range(50)]
    spec = PipelineSpec.model_validate({"name": "p", "steps": steps})
    counted = PipelineSpec.model_construct(name="p", params={}, steps=_CountedSteps(spec.steps))
    _CountedSteps.walks = 0
    for _ in range(3):
        assert [counted.step(f"s{i}").name for i in range(50)] == [f"s{i}" for i in range(50)]
    assert _CountedSteps.walks <= 1  # the map, made once (a walk per lookup was 150)
    with pytest.raises(KeyError):
        counted.step("nope")
    assert counted.model_dump() == spec.model_dump() and counted == spec  # the map is no field
    # a copy with other steps answers from its own steps, not from the map it was copied with
    other = counted.model_copy(update={"steps": spec.steps[:1]})
    assert other.step("s0") is spec.steps[0]
    with pytest.raises(KeyError):
        other.step("s1")
    assert "_steps_by_name" not in PipelineSpec.model_json_schema()["properties"]
