"""``pipeline retry`` end to end: the CLI against the real submission API (uvicorn on 127.0.0.1),
the real workflow service, scheduler and local executor (real processes) on a real nats-server."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainyard_client.cli import app as cli_app

pytestmark = [pytest.mark.service, pytest.mark.workflow, pytest.mark.local]


async def trainyard(url: str, token: str, *args: str):
    return await asyncio.to_thread(CliRunner().invoke, cli_app, ["--url", url, "--token", token, *args])


async def test_a_failed_run_is_retried_from_its_failed_step_keeping_the_step_that_succeeded(
    prefix, bus, workflow_stack
):
    marker = Path("/tmp") / f"trainyard-retry-{uuid.uuid4().hex}"  # /tmp: any job's uid may look
    pipeline = {
        "name": "flaky",
        "steps": [
            {"name": "first", "job": {"name": "first", "command": ["true"]}},
            {
                "name": "check",
                "depends": ["first"],
                "job": {"name": "check", "command": ["test", "-e", str(marker)]},
            },
            {"name": "after", "depends": ["check"], "job": {"name": "after", "command": ["true"]}},
        ],
    }
    try:
        async with workflow_stack() as client, client.served() as url:
            http = client.http
            run_id = (await http.post("/v1/pipelines", json={"pipeline": pipeline})).json()["run_id"]
            failed = await client.ended(run_id)
            assert failed.state.value == "failed" and failed.steps["after"].state.value == "skipped"

            wrong = await http.post(f"/v1/pipelines/{run_id}/retry", json={"attempt": 7})
            assert wrong.status_code == 409 and "no attempt 7" in wrong.text
            marker.touch(mode=0o644)  # what made the step fail is fixed

            retried = await trainyard(url, client.token, "pipeline", "retry", run_id, "--wait", "-o", "json")
            assert retried.exit_code == 0, retried.output
            run = json.loads(retried.stdout)  # the step lines of --wait go to stderr under -o json
            assert run["state"] == "succeeded" and run["attempt"] == 2
            steps = run["steps"]
            assert steps["first"]["jobs"]["0"]["job_id"] == failed.steps["first"].jobs[0].job_id  # kept
            assert steps["first"]["attempt"] == 1
            assert steps["check"]["attempt"] == 2 and steps["check"]["state"] == "succeeded"
            assert steps["check"]["jobs"]["0"]["job_id"] != failed.steps["check"].jobs[0].job_id
            assert steps["after"]["state"] == "succeeded"

            # the answer lost, asked again for attempt 1: the same retry, not a third attempt
            again = await http.post(f"/v1/pipelines/{run_id}/retry", json={"attempt": 1})
            assert again.status_code == 200 and again.json()["attempt"] == 2
            succeeded = await http.post(f"/v1/pipelines/{run_id}/retry")
            assert succeeded.status_code == 409 and "nothing to retry" in succeeded.text
            refused = await trainyard(url, client.token, "pipeline", "retry", run_id)
            assert refused.exit_code != 0 and "nothing to retry" in refused.output

            events = await bus.messages(f"{prefix}.pipeline.{run_id}.>", bus.subjects.streams.pipelines)
            kinds = [json.loads(m.data)["type"] for m in events]
            assert kinds.count("retried") == 1 and kinds.count("finished") == 2
            retried_event = next(
                json.loads(m.data) for m in events if json.loads(m.data)["type"] == "retried"
            )
            assert retried_event["steps"] == ["check", "after"] and retried_event["attempt"] == 2
    finally:
        marker.unlink(missing_ok=True)
