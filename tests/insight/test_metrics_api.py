"""``GET /v1/jobs/{id}/metrics`` (team-scoped like logs), the SDK and ``trainyard metrics``, against
the real services: the API under uvicorn on a loopback port, scheduler, executor, a local job."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from trainyard_client.cli import app as cli_app
from trainyard_client.sdk import TrainyardClient, TrainyardError
from trainyard_contracts import MetricsBatch, QueueConfig
from trainyard_scheduler.testkit import quick_scheduler
from trainyard_shared.testing.helpers import eventually, running, serving_http
from trainyard_submission.app import create_app as submission_app
from trainyard_submission.settings import SubmissionSettings

from .jobs import PY, batches, executor

pytestmark = [pytest.mark.insight, pytest.mark.service, pytest.mark.local]
TOKEN = "metrics-token-123456"

JOB = (
    "import time, trainyard\n"
    "for step in range(20):\n"
    "    trainyard.report(step, loss=1.0 / (step + 1), lr=0.01)\n"
    "    time.sleep(0.05)\n"
)


def follow_to_the_end(client: TrainyardClient, job_id: str) -> list[MetricsBatch | str]:
    items: list[MetricsBatch | str] = []
    for item in client.follow_metrics(job_id):
        items.append(item)
        if isinstance(item, str):
            break
    return items


async def test_a_teams_job_metrics_are_read_once_followed_and_shown_by_the_cli(common, bus):
    api = submission_app(common, SubmissionSettings(token=TOKEN, port=0))
    async with serving_http(api) as url, running(quick_scheduler(common)), running(executor(common)):
        with TrainyardClient(url, TOKEN) as admin:
            for team in ("alpha", "beta"):
                await asyncio.to_thread(admin.set_queue, QueueConfig(name=team))
            alpha = (await asyncio.to_thread(admin.create_token, "alpha")).token
            beta = (await asyncio.to_thread(admin.create_token, "beta")).token
            submitted = await asyncio.to_thread(
                admin.submit, {"name": "reporting", "command": [PY, "-c", JOB], "queue": "alpha"}
            )
            job_id = submitted.job_id
        assert alpha and beta
        with TrainyardClient(url, alpha) as team, TrainyardClient(url, beta) as other:
            followed = await asyncio.to_thread(follow_to_the_end, team, job_id)
            whole = await asyncio.to_thread(team.metrics, job_id)
            newest = await asyncio.to_thread(team.metrics, job_id, None, 5)
            with pytest.raises(TrainyardError) as refused:
                await asyncio.to_thread(other.metrics, job_id)
        runner = CliRunner()
        base = ["--url", url, "--token", alpha]
        as_json = await asyncio.to_thread(runner.invoke, cli_app, [*base, "metrics", job_id, "-o", "json"])
        as_table = await asyncio.to_thread(runner.invoke, cli_app, [*base, "metrics", job_id])
        followed_cli = await asyncio.to_thread(runner.invoke, cli_app, [*base, "metrics", job_id, "-f"])
        lines_cli = await asyncio.to_thread(
            runner.invoke, cli_app, [*base, "metrics", job_id, "-f", "-o", "json"]
        )

    assert followed[-1] == "succeeded"
    steps = [p.step for b in followed if isinstance(b, MetricsBatch) for p in b.points]
    assert steps == list(range(20))
    assert [p["step"] for p in whole["points"]] == list(range(20)) and whole["total"] == 20
    assert whole["points"][3] == {
        "attempt": 1,
        "step": 3,
        "time": whole["points"][3]["time"],
        "values": {
            "loss": 0.25,
            "lr": 0.01,
        },
    }
    assert [p["step"] for p in newest["points"]] == [15, 16, 17, 18, 19]
    assert refused.value.status == 403
    assert as_json.exit_code == 0, as_json.output
    assert [p["step"] for p in json.loads(as_json.output)["points"]] == list(range(20))
    assert as_table.exit_code == 0, as_table.output
    loss_row = next(line for line in as_table.output.splitlines() if line.strip().startswith("loss"))
    assert "0.05" in loss_row and "▁" in loss_row and "█" in loss_row  # last 1/20, and its history
    assert followed_cli.exit_code == 0 and "succeeded" in followed_cli.output, followed_cli.output
    assert any(line.strip().startswith("loss") for line in followed_cli.output.splitlines())
    batches = [MetricsBatch.model_validate_json(line) for line in lines_cli.output.splitlines()]
    assert [p.step for b in batches for p in b.points] == list(range(20))


WAITING = (
    "import os, time, trainyard\n"
    "for step in range(3):\n"
    "    trainyard.report(step, loss=1.0 / (step + 1))\n"
    "time.sleep(0.5)\n"
    "trainyard.report(3, loss=0.125, accuracy=0.5)\n"
    "go = os.path.join(os.environ['TRAINYARD_WORKDIR'], 'go')\n"
    "deadline = time.time() + 60\n"
    "while not os.path.exists(go) and time.time() < deadline:\n"
    "    time.sleep(0.05)\n"
)


async def test_top_shows_running_jobs_with_their_newest_point(common, bus):
    api = submission_app(common, SubmissionSettings(token=TOKEN, port=0))
    async with serving_http(api) as url, running(quick_scheduler(common)), running(executor(common)):
        with TrainyardClient(url, TOKEN) as client:
            job_id = (
                await asyncio.to_thread(client.submit, {"name": "topped", "command": [PY, "-c", WAITING]})
            ).job_id

            async def newest() -> dict | None:
                answer = await asyncio.to_thread(client.metrics, job_id, None, None, True)
                return answer if answer["points"] and answer["points"][-1]["step"] == 3 else None

            latest = await eventually(newest, 30, "the job's step 3 in its newest batch")
            stored = await batches(bus, job_id)
            runner = CliRunner()
            base = ["--url", url, "--token", TOKEN]
            as_json = await asyncio.to_thread(runner.invoke, cli_app, [*base, "top", "-o", "json"])
            as_table = await asyncio.to_thread(runner.invoke, cli_app, [*base, "top", "--once"])
            workdir = common.resolved_data_dir() / "executor" / "exec-m" / "work" / job_id / "attempt-1"
            (workdir / "go").touch()
            await asyncio.to_thread(client.wait, job_id, 60, 0.2)
            after = await asyncio.to_thread(runner.invoke, cli_app, [*base, "top", "-o", "json"])
    # the newest batch only, not the history (how the executor cut the batches depends on timing)
    assert [p["step"] for p in latest["points"]] == [p["step"] for p in stored[-1]["points"]]
    assert latest["total"] == len(stored[-1]["points"])
    assert as_json.exit_code == 0, as_json.output
    [row] = json.loads(as_json.output)["jobs"]
    assert (row["job_id"], row["step"], row["metrics"]) == (job_id, 3, {"loss": 0.125, "accuracy": 0.5})
    assert as_table.exit_code == 0, as_table.output
    assert job_id in as_table.output and "accuracy=0.5 loss=0.125" in as_table.output
    assert json.loads(after.output)["jobs"] == []
