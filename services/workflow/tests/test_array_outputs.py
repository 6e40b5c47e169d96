"""An array step's small outputs: one index's value (``outputs[<i>].<name>``) or every index's
as one JSON list in index order (``outputs.<name>``), checked when the pipeline is read and
bounded when filled in."""

from __future__ import annotations

import json

import pytest

from trainyard_contracts.spec import SpecError
from trainyard_contracts.specsize import MAX_SPEC_BYTES
from trainyard_contracts.workflow import MAX_LISTED_INDICES, validate_pipeline
from trainyard_workflow.step_values import OutputMissing, referenced_steps, with_outputs

pytestmark = [pytest.mark.unit, pytest.mark.workflow]


def step(name: str, command: list[str], **rest) -> dict:
    return {"name": name, "job": {"name": name, "command": command, **rest.pop("job", {})}, **rest}


def pipeline(*steps: dict) -> dict:
    return {"name": "p", "steps": list(steps)}


def fit(array: str = "0-4:2") -> dict:
    return step("fit", ["true"], array=array)


def errors(document: dict) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        validate_pipeline(document)
    return {e.field: e.message for e in caught.value.errors}


def test_every_index_as_a_json_list_in_index_order_and_one_index_by_its_number():
    spec = validate_pipeline(
        pipeline(
            fit(),
            step(
                "pick",
                ["pick", "--all=${{ steps.fit.outputs.acc }}", "${{ steps.fit.outputs[4].name }}"],
                depends=["fit"],
                job={
                    "env": {"ACC": "${{ steps.fit.outputs.acc }}"},
                    "params": {
                        "acc": "${{ steps.fit.outputs.acc }}",
                        "best": "${{ steps.fit.outputs[2].acc }}",
                    },
                },
            ),
        )
    )
    assert referenced_steps(spec.step("pick")) == {"fit"}
    per_index = {4: {"acc": 0.9, "name": "c 10"}, 0: {"acc": 0.5, "name": "a"}, 2: {"acc": True, "name": "b"}}
    job = with_outputs(spec.step("pick").job, {"fit": per_index}, frozenset({"fit"}))
    assert job.command == ["pick", "--all=[0.5,true,0.9]", "c 10"]  # by index, not by arrival
    assert json.loads(job.env["ACC"]) == [0.5, True, 0.9]
    assert job.params == {"acc": "[0.5,true,0.9]", "best": True}  # one index keeps its type


@pytest.mark.parametrize(
    ("reference", "array", "says"),
    [
        ("${{ steps.fit.outputs[1].acc }}", "0-4:2", "has no index 1 (its array is 0-4, 3 indices)"),
        ("${{ steps.prepare.outputs[0].acc }}", "0-4:2", "'prepare' is not an array"),
        ("${{ steps.fit.outputs.acc }}", f"0-{MAX_LISTED_INDICES}", "name one index"),
        ("${{ steps.fit.outputs[x].acc }}", "0-4:2", "outputs[<index>]"),
    ],
)
def test_a_reference_to_an_index_not_there_or_a_list_too_long_is_refused_naming_its_field(
    reference, array, says
):
    found = errors(
        pipeline(
            fit(array),
            step("prepare", ["true"]),
            step("pick", ["echo", reference], depends=["fit", "prepare"]),
        )
    )
    assert says in found.get("steps.2.job.command.1", ""), found


def test_an_index_that_reported_nothing_fails_the_dependent_naming_the_index():
    spec = validate_pipeline(
        pipeline(fit(), step("pick", ["echo", "${{ steps.fit.outputs.acc }}"], depends=["fit"]))
    )
    job = spec.step("pick").job
    with pytest.raises(
        OutputMissing, match=r"command.1: step 'fit' index 2 reported no output 'acc' \(it reported: loss\)"
    ):
        with_outputs(job, {"fit": {0: {"acc": 1}, 2: {"loss": 3}, 4: {"acc": 2}}}, frozenset({"fit"}))
    with pytest.raises(OutputMissing, match="step 'fit' index 0 reported no outputs"):
        with_outputs(job, {"fit": {0: None, 2: {"acc": 1}, 4: {"acc": 2}}}, frozenset({"fit"}))


def test_values_that_would_make_the_job_spec_too_big_fail_the_dependent_with_the_limit():
    spec = validate_pipeline(
        pipeline(
            fit("0-9"),
            step("pick", ["echo"], depends=["fit"], job={"env": {"ALL": "${{ steps.fit.outputs.blob }}"}}),
        )
    )
    big = "x" * (MAX_SPEC_BYTES // 8)  # each index's value within the 64 KiB of outputs.json
    with pytest.raises(
        OutputMissing, match=r"env: with the outputs filled in, the spec is \d+ KiB as JSON, over"
    ):
        with_outputs(
            spec.step("pick").job, {"fit": {i: {"blob": big} for i in range(10)}}, frozenset({"fit"})
        )
