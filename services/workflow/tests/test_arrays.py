"""Job arrays through the real services (nats-server, submission, scheduler, local executor,
workflow): each child job sees its own index and the array's size."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from trainyard_client.cli import app
from trainyard_shared.testing.helpers import eventually

runner = CliRunner()
pytestmark = [pytest.mark.service, pytest.mark.workflow, pytest.mark.local]

PRINT_INDEX = [
    "python3",
    "-c",
    "import os; e = os.environ; print('index', e['TRAINYARD_ARRAY_INDEX'], 'of', e['TRAINYARD_ARRAY_COUNT'])",
]


async def test_each_job_of_an_array_step_sees_its_index_and_the_count(workflow_stack, bus):
    pipeline = {
        "name": "sweep",
        "steps": [{"name": "fit", "array": "0-2", "job": {"name": "fit", "command": PRINT_INDEX}}],
    }
    async with workflow_stack() as client:
        started = await client.ask("run", pipeline=pipeline)
        run = await client.ended(started.run.run_id)
        assert run.state.value == "succeeded", run.steps["fit"].reason
        jobs = run.steps["fit"].jobs
        assert sorted(jobs) == [0, 1, 2]
        for index, child in jobs.items():
            assert f"index {index} of 3" in await bus.log_text(child.job_id)
            record = await bus.record(child.job_id)
            assert record.spec.array_task is not None and record.spec.array_task.index == index


async def test_a_caller_cannot_set_which_job_of_an_array_a_job_is(workflow_stack):
    spec = {"name": "fake", "command": ["true"], "array_task": {"index": 1, "count": 2}}
    async with workflow_stack() as client:
        response = await client.http.post("/v1/jobs", json=spec)
        assert response.status_code == 422, response.text
        assert [e["field"] for e in response.json()["errors"]] == ["array_task"]


async def test_a_job_spec_with_array_is_one_array_object_counted_per_state(workflow_stack, bus):
    spec = {"name": "sweep", "array": "0-4%2", "command": PRINT_INDEX}
    async with workflow_stack() as client:
        response = await client.http.post("/v1/jobs", json=spec)
        assert response.status_code == 201, response.text
        accepted = response.json()
        assert accepted["kind"] == "array" and accepted["count"] == 5 and accepted["array"] == "0-4%2"
        array_id = accepted["array_id"]
        assert sum(accepted["counts"].values()) == 5

        async def ended():
            status = (await client.http.get(f"/v1/arrays/{array_id}")).json()
            return status if status["state"] != "running" else None

        status = await eventually(ended, 60, "the array ended")
        assert status["state"] == "succeeded" and status["counts"]["succeeded"] == 5
        assert status["counts"]["not_started"] == 0 and status["counts"]["submitted"] == 0
        run = (await client.ask("status", run_id=array_id)).run
        for index, child in run.steps["array"].jobs.items():
            assert f"index {index} of 5" in await bus.log_text(child.job_id)
        # one array object, not five jobs submitted by the API: the children are the workflow's
        listed = (await client.http.get("/v1/jobs")).json()["jobs"]
        assert {job["job_id"] for job in listed} == {c.job_id for c in run.steps["array"].jobs.values()}


async def test_bad_array_syntax_is_refused_naming_the_field_and_no_job_is_made(workflow_stack):
    async with workflow_stack() as client:
        for bad in ("0-99%0", "5-1", "x", 7, "0-20000"):
            response = await client.http.post(
                "/v1/jobs", json={"name": "s", "array": bad, "command": ["true"]}
            )
            assert response.status_code == 422, (bad, response.text)
            assert [e["field"] for e in response.json()["errors"]] == ["array"], bad
        missing = await client.http.post("/v1/jobs", json={"name": "s", "array": "0-3"})
        assert [e["field"] for e in missing.json()["errors"]] == ["command"]
        assert (await client.http.get("/v1/jobs")).json()["jobs"] == []
        assert (await client.ask("list")).runs == []


async def test_cancelling_an_array_stops_its_running_jobs_and_starts_no_more(workflow_stack, bus):
    spec = {"name": "long", "array": "0-9%2", "command": ["sleep", "120"]}
    async with workflow_stack() as client:
        array_id = (await client.http.post("/v1/jobs", json=spec)).json()["array_id"]

        async def two_running():
            run = (await client.ask("status", run_id=array_id)).run
            jobs = [j.job_id for j in run.steps["array"].jobs.values() if j.job_id]
            records = [await bus.record(j) for j in jobs]
            return jobs if len(jobs) == 2 and all(r.state == "running" for r in records) else None

        first_two = await eventually(two_running, 60, "two jobs of the array running")
        cancelled = await client.http.post(f"/v1/arrays/{array_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["state"] == "cancelled" and cancelled.json()["counts"]["not_started"] == 8

        async def both_cancelled():
            states = [(await bus.record(j)).state for j in first_two]
            return states if all(s == "cancelled" for s in states) else None

        await eventually(both_cancelled, 60, "the array's running jobs cancelled")
        run = (await client.ask("status", run_id=array_id)).run
        assert len(run.steps["array"].jobs) == 2  # nothing more was submitted


async def test_the_cli_submits_an_array_from_yaml_and_shows_its_counts(workflow_stack, tmp_path):
    """`trainyard submit` and `trainyard array status|cancel` against the real API on a socket."""
    spec = tmp_path / "sweep.yaml"
    spec.write_text('name: sweep\narray: "0-3%2"\ncommand: ["true"]\n')
    bad = tmp_path / "bad.yaml"
    bad.write_text('name: sweep\narray: "3-1"\ncommand: ["true"]\n')
    async with workflow_stack() as client, client.served() as url:

        def cli(*args: str):
            return runner.invoke(app, ["--url", url, "--token", client.token, *args])

        refused = await asyncio.to_thread(cli, "submit", str(bad))
        assert (
            refused.exit_code == 2 and "array" in refused.output and "ends before it starts" in refused.output
        )
        submitted = await asyncio.to_thread(cli, "submit", str(spec), "-o", "json")
        assert submitted.exit_code == 0, submitted.output
        accepted = json.loads(submitted.output)
        assert accepted["kind"] == "array" and accepted["count"] == 4

        async def ended():
            shown = await asyncio.to_thread(cli, "array", "status", accepted["array_id"], "-o", "json")
            status = json.loads(shown.output)
            return status if status["state"] != "running" else None

        status = await eventually(ended, 60, "the array ended")
        assert status["counts"]["succeeded"] == 4
        table = await asyncio.to_thread(cli, "array", "status", accepted["array_id"])
        assert "4 jobs (4 succeeded)" in table.output
