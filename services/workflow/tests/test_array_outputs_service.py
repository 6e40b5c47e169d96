"""An array step's outputs on a real nats-server with the real submission, scheduler, local
executor (real processes) and workflow service: three indices each write outputs.json, and a
dependent's job is submitted with every index's value as a JSON list and one index's by number."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.service, pytest.mark.workflow, pytest.mark.local]

WRITE_OUTPUTS = (
    "import json, os; i = int(os.environ['TRAINYARD_ARRAY_INDEX']); "
    "json.dump({'acc': i / 10, 'c': f'c{i}'}, "
    "open(os.path.join(os.environ['TRAINYARD_OUTPUT_DIR'], 'outputs.json'), 'w'))"
)
PIPELINE = {
    "name": "array-outputs",
    "steps": [
        {"name": "fit", "array": "0-2", "job": {"name": "fit", "command": ["python3", "-c", WRITE_OUTPUTS]}},
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
        started = await client.ask("run", pipeline=PIPELINE, by="tester")
        assert started.ok and started.run is not None
        run = await client.ended(started.run.run_id)
        assert run.state.value == "succeeded", run.steps

        pick_id = run.steps["pick"].jobs[0].job_id
        pick = await bus.record(pick_id)
        assert pick.spec.command == ["echo", "[0.0,0.1,0.2]", "c2"]
        assert json.loads(pick.spec.command[1]) == [0.0, 0.1, 0.2]  # ordered by index
        assert pick.spec.params == {"best": 0.2}
        assert any("[0.0,0.1,0.2] c2" in line for line in await bus.log_text(pick_id))
