"""``trainyard schedule …`` against the real submission API (uvicorn on 127.0.0.1) and the real
workflow service on a real nats-server; the CLI runs in a thread, as a user's terminal would."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import uvicorn
from typer.testing import CliRunner

from trainyard_client.cli import app as cli_app
from trainyard_shared.natsserver import free_port
from trainyard_shared.testing.helpers import common_settings, eventually, running
from trainyard_submission.app import create_app as submission_app
from trainyard_submission.settings import SubmissionSettings
from trainyard_workflow.app import create_app as workflow_app
from trainyard_workflow.schedule_core import tick_run_id
from trainyard_workflow.settings import WorkflowSettings

pytestmark = [pytest.mark.service, pytest.mark.workflow]
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "pipelines" / "nightly.yaml"
TOKEN = "schedule-cli-admin-1"


@contextlib.asynccontextmanager
async def served_api(nats_server, prefix, tmp_path):
    api = submission_app(
        common_settings(nats_server.url, prefix, tmp_path / "api"), SubmissionSettings(token=TOKEN)
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: asyncio.sleep(0, server.started), 30, "the API listening")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def trainyard(url: str, *args: str):
    result = await asyncio.to_thread(CliRunner().invoke, cli_app, ["--url", url, "--token", TOKEN, *args])
    return result


async def test_the_nightly_example_is_created_listed_backfilled_suspended_and_deleted_from_the_cli(
    nats_server, prefix, tmp_path
):
    settings = WorkflowSettings(schedule_tick_seconds=0.05, replica_id="cli")
    workflow = workflow_app(common_settings(nats_server.url, prefix, tmp_path / "wf"), settings)
    async with served_api(nats_server, prefix, tmp_path) as url, running(workflow):
        created = await trainyard(url, "schedule", "create", str(EXAMPLE), "-o", "json")
        assert created.exit_code == 0, created.output
        assert json.loads(created.output)["spec"]["cron"] == "0 3 * * *"
        again = await trainyard(url, "schedule", "create", str(EXAMPLE))
        assert again.exit_code != 0 and "exists already" in again.output
        listed = await trainyard(url, "schedule", "list", "-o", "json")
        assert [s["spec"]["name"] for s in json.loads(listed.output)] == ["nightly"]
        window = ["--from", "2026-03-28T00:00:00+01:00", "--to", "2026-03-29T23:00:00+02:00"]
        filled = await trainyard(url, "schedule", "backfill", "nightly", *window, "-o", "json")
        assert filled.exit_code == 0, filled.output
        # 03:00 on both days, the second one already on summer time
        ticks = [datetime(2026, 3, 28, 2, tzinfo=UTC), datetime(2026, 3, 29, 1, tzinfo=UTC)]
        assert json.loads(filled.output)["run_ids"] == [tick_run_id("nightly", t) for t in ticks]
        no_offset = await trainyard(
            url, "schedule", "backfill", "nightly", "--from", "2026-03-28T00:00", "--to", "2026-03-29T00:00"
        )
        assert no_offset.exit_code == 2 and "offset" in no_offset.output
        suspended = await trainyard(url, "schedule", "suspend", "nightly", "-o", "json")
        assert json.loads(suspended.output)["spec"]["suspended"] is True
        shown = await trainyard(url, "schedule", "get", "nightly")
        assert "suspended" in shown.output and "fired 2" in shown.output
        deleted = await trainyard(url, "schedule", "delete", "nightly", "-o", "json")
        assert json.loads(deleted.output) == {"name": "nightly", "deleted": True}
        gone = await trainyard(url, "schedule", "get", "nightly")
        assert gone.exit_code == 4 and "no schedule 'nightly'" in gone.output
