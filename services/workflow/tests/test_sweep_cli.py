"""``trainyard sweep …`` and ``/v1/sweeps`` against the real submission API (uvicorn on
127.0.0.1), scheduler, local executor and workflow service on a real nats-server; the CLI runs in
a thread, as a user's terminal would."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from trainyard_client.cli.app import app as cli_app
from trainyard_shared.testing.helpers import eventually

from .conftest import TOKEN
from .test_sweep_service import TRIAL

pytestmark = [pytest.mark.service, pytest.mark.workflow, pytest.mark.sweep, pytest.mark.local]


async def trainyard(url: str, *args: str):
    return await asyncio.to_thread(CliRunner().invoke, cli_app, ["--url", url, "--token", TOKEN, *args])


def sweep_file(tmp_path, name: str, **over) -> str:
    document = {
        "name": name,
        "job": {
            "name": name,
            "command": ["python3", "-c", TRIAL, "${{ params.x }}", "2", "${{ params.delay }}"],
        },
        "space": {
            "x": {"type": "float", "low": 0, "high": 10},
            "delay": {"type": "categorical", "choices": [0]},
        },
        "objective": {"metric": "score", "direction": "maximize"},
        "sampler": {"type": "random", "seed": 5},
        "max_trials": 3,
        "max_parallel": 2,
        **over,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return str(path)


async def test_sweep_run_wait_status_best_list_and_cancel_from_the_cli(workflow_stack, tmp_path):
    async with workflow_stack() as client, client.served() as url:
        ran = await trainyard(url, "sweep", "run", sweep_file(tmp_path, "toy"), "--wait", "-o", "json")
        assert ran.exit_code == 0, ran.output
        record = json.loads(ran.output)
        assert record["state"] == "succeeded" and len(record["trials"]) == 3
        sweep_id = record["sweep_id"]
        best = max(record["trials"], key=lambda t: t["value"])
        assert record["best"] == best["number"] and best["value"] == best["params"]["x"]

        table = await trainyard(url, "sweep", "status", sweep_id)
        assert table.exit_code == 0, table.output
        rows = [line for line in table.output.splitlines() if line.startswith("│") and "complete" in line]
        assert len(rows) == 3 and rows[0].split()[1].lstrip("*") == str(best["number"])  # best first
        shown = await trainyard(url, "sweep", "best", sweep_id, "-o", "json")
        assert json.loads(shown.output)["trial"]["number"] == best["number"]
        assert json.loads(shown.output)["model"] is None  # the toy registers none
        listed = await trainyard(url, "sweep", "list", "-o", "name")
        assert sweep_id in listed.output.split()

        bad = await trainyard(url, "sweep", "run", sweep_file(tmp_path, "bad", max_parallel=0))
        assert bad.exit_code == 2 and "max_parallel" in bad.output

        # a slow sweep, cancelled: its running trials' jobs are cancelled too
        slow = sweep_file(
            tmp_path,
            "slow",
            space={
                "x": {"type": "float", "low": 0, "high": 10},
                "delay": {"type": "categorical", "choices": [30]},
            },
        )
        started = json.loads((await trainyard(url, "sweep", "run", slow, "-o", "json")).output)

        async def running_job():
            found = json.loads(
                (await trainyard(url, "sweep", "status", started["sweep_id"], "-o", "json")).output
            )
            jobs = [t["job_id"] for t in found["trials"] if t["job_id"]]
            states = [(await client.http.get(f"/v1/jobs/{j}")).json()["state"] for j in jobs]
            return jobs if "running" in states else None

        jobs = await eventually(running_job, 60, "a trial running")
        cancelled = await trainyard(url, "sweep", "cancel", started["sweep_id"], "-o", "json")
        assert json.loads(cancelled.output)["state"] == "cancelled"

        async def all_cancelled():
            states = [(await client.http.get(f"/v1/jobs/{j}")).json()["state"] for j in jobs]
            return states if set(states) == {"cancelled"} else None

        await eventually(all_cancelled, 60, "the trials' jobs cancelled")

        # a team token sees none of the admin's sweeps, and cannot cancel them
        team = (await client.http.post("/v1/tokens", json={"team": "default"})).json()["token"]
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {team}"}) as http:
            assert (await http.get("/v1/sweeps")).json() == {"sweeps": []}
            assert (await http.get(f"/v1/sweeps/{sweep_id}")).status_code == 404
            assert (await http.post(f"/v1/sweeps/{sweep_id}/cancel")).status_code == 404
        async with httpx.AsyncClient(base_url=url) as anonymous:
            assert (await anonymous.get("/v1/sweeps")).status_code == 401
