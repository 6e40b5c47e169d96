"""Step outputs: what a job's outputs.json may hold, where a pipeline may use them, and how they
are filled into a later step's job (literal text, never a shell's). An array step's: one index's
value (``outputs[<i>].<name>``) or every index's as one JSON list in index order
(``outputs.<name>``), checked when the pipeline is read and bounded when filled in."""

from __future__ import annotations

import json

import pytest

from trainyard_contracts.spec import SpecError
from trainyard_contracts.specsize import MAX_SPEC_BYTES
from trainyard_contracts.stepoutputs import OUTPUTS_MAX_BYTES, OutputsError, parse_outputs
from trainyard_contracts.workflow import MAX_LISTED_INDICES, validate_pipeline
from trainyard_workflow.step_values import OutputMissing, referenced_steps, with_outputs

pytestmark = [pytest.mark.unit, pytest.mark.workflow]


def test_outputs_json_is_a_flat_object_of_names_to_scalars():
    assert parse_outputs(b'{"accuracy": 0.97, "split": "s3://x", "best": true, "n": 3}') == {
        "accuracy": 0.97,
        "split": "s3://x",
        "best": True,
        "n": 3,
    }


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"[1, 2]", "JSON object"),
        (b'{"a": {"b": 1}}', "string, number or true/false"),
        (b'{"a": [1]}', "string, number or true/false"),
        (b'{"a": null}', "string, number or true/false"),
        (b'{"a": NaN}', "not JSON"),
        (b'{"bad name": 1}', "must match"),
        (b'{"a": "x\\u0000y"}', "NUL"),
        (b"\xff\xfe", "UTF-8"),
        (b'{"a": "' + b"x" * OUTPUTS_MAX_BYTES + b'"}', "over"),
    ],
)
def test_anything_else_is_refused_whole_with_the_reason(data, says):
    with pytest.raises(OutputsError, match=says):
        parse_outputs(data)


def pipeline(*steps: dict) -> dict:
    return {"name": "p", "steps": list(steps)}


def step(name: str, command: list[str], **rest) -> dict:
    return {"name": name, "job": {"name": name, "command": command, **rest.pop("job", {})}, **rest}


PREPARE = step("prepare", ["true"])


def errors(document: dict) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        validate_pipeline(document)
    return {e.field: e.message for e in caught.value.errors}


def test_a_step_may_use_the_outputs_of_a_step_it_depends_on_in_command_env_and_params():
    spec = validate_pipeline(
        pipeline(
            PREPARE,
            step(
                "train",
                ["python", "train.py", "--split=${{ steps.prepare.outputs.split }}"],
                depends=["prepare"],
                job={
                    "env": {"ROWS": "${{ steps.prepare.outputs.rows }}"},
                    "params": {"rows": "${{steps.prepare.outputs.rows}}"},
                },
            ),
        )
    )
    assert referenced_steps(spec.step("train")) == {"prepare"}
    assert referenced_steps(spec.step("prepare")) == set()


@pytest.mark.parametrize(
    ("train", "field", "says"),
    [
        (
            step("train", ["echo", "${{ steps.prepare.outputs.a }}"]),
            "steps.1.job.command.1",
            "does not depend",
        ),
        (
            step("train", ["echo", "${{ steps.prepare.outputs.a }}"], depends={"prepare": "finished"}),
            "steps.1.job.command.1",
            "does not depend on with succeeded",
        ),
        (
            step("train", ["echo ${{ steps.prepare.outputs.a }}"], depends=["prepare"], job={"shell": True}),
            "steps.1.job.command.0",
            "a shell would read the value",
        ),
        (
            step("train", ["true"], depends=["prepare"], job={"image": "${{ steps.prepare.outputs.a }}"}),
            "steps.1.job.image",
            "command, env and params only",
        ),
        (
            step("train", ["echo", "${{ steps.prepare.output.a }}"], depends=["prepare"]),
            "steps.1.job.command.1",
            "reads",
        ),
    ],
)
def test_a_reference_that_could_not_be_met_or_would_reach_a_shell_is_refused_naming_its_field(
    train, field, says
):
    found = errors(pipeline(PREPARE, train))
    assert field in found and says in found[field], found


def test_a_shell_step_may_take_a_value_in_env_where_the_shell_does_not_parse_it():
    spec = validate_pipeline(
        pipeline(
            PREPARE,
            step(
                "train",
                ['echo "$SPLIT"'],
                depends=["prepare"],
                job={"shell": True, "env": {"SPLIT": "${{ steps.prepare.outputs.split }}"}},
            ),
        )
    )
    filled = with_outputs(spec.step("train").job, {"prepare": {"split": "$(rm -rf /); `id`"}})
    assert filled.env["SPLIT"] == "$(rm -rf /); `id`"  # the value as written, for "$SPLIT" to read
    assert filled.command == ['echo "$SPLIT"']


def test_values_are_filled_in_as_literal_text_and_a_whole_params_reference_keeps_its_type():
    spec = validate_pipeline(
        pipeline(
            PREPARE,
            step(
                "train",
                ["python", "t.py", "--c=${{ steps.prepare.outputs.c }}", "${{ steps.prepare.outputs.note }}"],
                depends=["prepare"],
                job={
                    "env": {"BEST": "${{ steps.prepare.outputs.best }}"},
                    "params": {
                        "c": "${{ steps.prepare.outputs.c }}",
                        "label": "c=${{ steps.prepare.outputs.c }}",
                    },
                },
            ),
        )
    )
    outputs = {"prepare": {"c": 0.5, "best": True, "note": "a b; ${{ params.x }} $(id)"}}
    job = with_outputs(spec.step("train").job, outputs)
    assert job.command == ["python", "t.py", "--c=0.5", "a b; ${{ params.x }} $(id)"]
    assert job.env == {"BEST": "true"}
    assert job.params == {"c": 0.5, "label": "c=0.5"}


def test_an_output_that_is_not_there_names_the_field_and_what_was_reported():
    spec = validate_pipeline(
        pipeline(PREPARE, step("train", ["echo", "${{ steps.prepare.outputs.split }}"], depends=["prepare"]))
    )
    with pytest.raises(
        OutputMissing, match=r"command.1: step 'prepare' reported no output 'split' \(it reported: rows\)"
    ):
        with_outputs(spec.step("train").job, {"prepare": {"rows": 3}})
    with pytest.raises(OutputMissing, match="reported no outputs"):
        with_outputs(spec.step("train").job, {"prepare": None})


def _record(**changes):
    from datetime import UTC, datetime

    from trainyard_contracts import JobRecord, JobSpec, JobState

    spec = JobSpec.model_validate(
        {
            "name": "train",
            "command": ["true"],
            **({"outputs": {"model": "digits"}} if changes.pop("model_job", False) else {}),
        }
    )
    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    return JobRecord(
        job_id="job-1", spec=spec, state=JobState.SUCCEEDED, submitted_at=now, updated_at=now, **changes
    )


def test_a_registered_model_adds_its_name_and_version_over_what_the_job_wrote():
    from datetime import timedelta

    from trainyard_contracts import ModelRef
    from trainyard_workflow.core import ModelNotYet, outputs_of_record

    wait = timedelta(minutes=5)
    plain = _record(outputs={"accuracy": 0.9})
    assert outputs_of_record(plain, plain.updated_at, wait) == {"accuracy": 0.9}
    assert outputs_of_record(_record(), plain.updated_at, wait) is None

    waiting = _record(model_job=True, outputs={"accuracy": 0.9, "model_version": 99})
    with pytest.raises(ModelNotYet):  # the registry has not said yet: its dependents wait
        outputs_of_record(waiting, waiting.updated_at + timedelta(seconds=30), wait)
    # a registry away for longer: they go on without it (and fail naming the missing output)
    assert outputs_of_record(waiting, waiting.updated_at + wait, wait) == {"accuracy": 0.9}

    registered = waiting.model_copy(update={"model": ModelRef(name="digits", version=3)})
    # the registry's version, never the one the job wrote itself
    assert outputs_of_record(registered, registered.updated_at, wait) == {
        "accuracy": 0.9,
        "model_name": "digits",
        "model_version": 3,
    }


# -- an array step's outputs -----------------------------------------------------------------------


def fit(array: str = "0-4:2") -> dict:
    return step("fit", ["true"], array=array)


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
