"""Step outputs on a real nats-server with the real submission, scheduler, local executor (real
processes) and workflow service: a job's outputs.json reaches its record and its succeeded event,
and a later step's job is submitted with the values filled in; a value not there fails the step.
An array step's indices each write outputs.json, and a dependent gets every index's value as a
JSON list and one index's by number."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.service, pytest.mark.workflow, pytest.mark.local]

WRITE_OUTPUTS = (
    "import json, os; "
    "json.dump({'split': 'a b; $(id)', 'rows': 1797}, "
    "open(os.path.join(os.environ['TRAINYARD_OUTPUT_DIR'], 'outputs.json'), 'w'))"
)
PIPELINE = {
    "name": "outputs",
    "steps": [
        {"name": "prepare", "job": {"name": "prepare", "command": ["python3", "-c", WRITE_OUTPUTS]}},
        {
            "name": "train",
            "depends": ["prepare"],
            "job": {
                "name": "train",
                "command": [
                    "echo",
                    "${{ steps.prepare.outputs.split }}",
                    "--rows=${{ steps.prepare.outputs.rows }}",
                ],
                "params": {"rows": "${{ steps.prepare.outputs.rows }}"},
            },
        },
        {
            "name": "evaluate",
            "depends": ["train"],
            "job": {"name": "evaluate", "command": ["echo", "${{ steps.train.outputs.accuracy }}"]},
        },
    ],
}


async def test_outputs_pass_to_the_next_step_and_a_missing_one_fails_its_step(prefix, bus, workflow_stack):
    async with workflow_stack() as client:
        started = await client.ask("run", pipeline=PIPELINE, by="tester")
        assert started.ok and started.run is not None
        run = await client.ended(started.run.run_id)

        prepare = await bus.record(run.steps["prepare"].jobs[0].job_id)
        assert prepare.outputs == {"split": "a b; $(id)", "rows": 1797}
        train_id = run.steps["train"].jobs[0].job_id
        train = await bus.record(train_id)
        # literal: one argv item, as written, no shell in between
        assert train.spec.command == ["echo", "a b; $(id)", "--rows=1797"]
        assert train.spec.params == {"rows": 1797}
        assert any("a b; $(id) --rows=1797" in line for line in await bus.log_text(train_id))
        assert train.outputs is None  # it wrote none

        assert run.steps["evaluate"].state.value == "failed"
        assert run.steps["evaluate"].jobs[0].job_id is None  # never submitted
        assert "step 'train' reported no outputs" in (run.steps["evaluate"].reason or "")
        assert run.state.value == "failed"

        events = await bus.messages(f"{prefix}.job.{prepare.job_id}.succeeded", bus.subjects.streams.jobs)
        assert json.loads(events[-1].data)["outputs"] == {"split": "a b; $(id)", "rows": 1797}
        ended = await bus.messages(
            f"{prefix}.pipeline.{run.run_id}.step_ended", bus.subjects.streams.pipelines
        )
        evaluate_end = [json.loads(m.data) for m in ended if json.loads(m.data)["step"] == "evaluate"]
        assert evaluate_end and evaluate_end[0]["state"] == "failed"


async def test_outputs_at_the_size_limit_reach_the_record(bus, workflow_stack):
    """64 KiB of outputs travel in the executor's report of the attempt's end: the reports stream
    takes a message that size (it refused anything over 64 KiB in all before)."""
    from trainyard_contracts.stepoutputs import OUTPUTS_MAX_BYTES

    size = OUTPUTS_MAX_BYTES - 100
    write = (
        "import json, os; "
        f"json.dump({{'blob': 'x' * {size}}}, "
        "open(os.path.join(os.environ['TRAINYARD_OUTPUT_DIR'], 'outputs.json'), 'w'))"
    )
    pipeline = {
        "name": "big",
        "steps": [{"name": "big", "job": {"name": "big", "command": ["python3", "-c", write]}}],
    }
    async with workflow_stack() as client:
        started = await client.ask("run", pipeline=pipeline, by="tester")
        run = await client.ended(started.run.run_id)
        assert run.state.value == "succeeded"
        record = await bus.record(run.steps["big"].jobs[0].job_id)
        assert record.outputs is not None and len(record.outputs["blob"]) == size


WRITE_PER_INDEX = (
    "import json, os; i = int(os.environ['TRAINYARD_ARRAY_INDEX']); "
    "json.dump({'acc': i / 10, 'c': f'c{i}'}, "
    "open(os.path.join(os.environ['TRAINYARD_OUTPUT_DIR'], 'outputs.json'), 'w'))"
)
ARRAY_PIPELINE = {
    "name": "array-outputs",
    "steps": [
        {
            "name": "fit",
            "array": "0-2",
            "job": {"name": "fit", "command": ["python3", "-c", WRITE_PER_INDEX]},
        },
        {
            "name": "pick",
            "depends": ["fit"],
            "job": {
                "name": "pick",
                "command": ["echo", "${{ steps.fit.outputs.acc }}", "${{ steps.fit.outputs[2].c }}"],
                "params": {"best": "${{ steps.fit.outputs[2].acc }}"},
            },
        },
    ],
}


async def test_a_dependent_reads_every_index_as_a_list_and_one_index_by_number(bus, workflow_stack):
    async with workflow_stack() as client:
        started = await client.ask("run", pipeline=ARRAY_PIPELINE, by="tester")
        assert started.ok and started.run is not None
        run = await client.ended(started.run.run_id)
        assert run.state.value == "succeeded", run.steps

        pick_id = run.steps["pick"].jobs[0].job_id
        pick = await bus.record(pick_id)
        assert pick.spec.command == ["echo", "[0.0,0.1,0.2]", "c2"]
        assert json.loads(pick.spec.command[1]) == [0.0, 0.1, 0.2]  # ordered by index
        assert pick.spec.params == {"best": 0.2}
        assert any("[0.0,0.1,0.2] c2" in line for line in await bus.log_text(pick_id))
