"""`GET /v1/jobs/{id}/why` and `POST /v1/jobs/dry-run`: the submission API asks the scheduler
leader over NATS (request/reply) — real submission, scheduler and executor apps in process, a
real nats-server; the HTTP side driven over ASGI."""

from __future__ import annotations

import contextlib
import sys

import httpx
import pytest

from trainyard_executor.app import create_app as executor_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_scheduler.app import create_app as scheduler_app
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_submission.app import create_app as submission_app
from trainyard_submission.settings import SubmissionSettings

from .harness import common_settings, eventually, running

pytestmark = [pytest.mark.service, pytest.mark.local]
AUTH = {"Authorization": "Bearer why-token-123456"}
PY = sys.executable


@contextlib.asynccontextmanager
async def services(nats_server, prefix, tmp_path):
    # entered in the test's own task: anyio's cancel scopes must be left by the task that
    # entered them, which an async fixture's teardown does not guarantee
    common = common_settings(nats_server.url, prefix, tmp_path / "data")
    api = submission_app(common, SubmissionSettings(token="why-token-123456"))
    scheduler = scheduler_app(common, SchedulerSettings(tick_seconds=0.2))
    executor = executor_app(common, ExecutorSettings(id="exec-w", cpu=1, memory=2048, heartbeat_seconds=0.5))
    async with api.router.lifespan_context(api), running(scheduler), running(executor):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=AUTH) as client:
            yield client


async def test_why_and_dry_run_over_http(nats_server, prefix, tmp_path):
    async with services(nats_server, prefix, tmp_path) as stack:
        await why_and_dry_run(stack)


async def why_and_dry_run(stack):
    async def leader_answers():
        r = await stack.post("/v1/jobs/dry-run", json={"name": "p", "command": ["true"]})
        return r if r.status_code == 200 and r.json()["would_start"] else None

    fits = (await eventually(leader_answers, 15, "the leader seeing the executor's room")).json()
    assert fits["would_start"] is True and fits["executors"] == ["exec-w"]

    r = await stack.post(
        "/v1/jobs", json={"name": "hog", "command": [PY, "-c", "import time; time.sleep(30)"]}
    )
    hog = r.json()["job_id"]
    r = await stack.post("/v1/jobs", json={"name": "next", "command": ["true"]})
    waiting = r.json()["job_id"]

    async def explained():
        r = await stack.get(f"/v1/jobs/{waiting}/why")
        body = r.json()
        # the head of the queue holds the reservation: it starts as soon as the hog ends
        return body if r.status_code == 200 and body.get("reason", {}).get("kind") == "reserved" else None

    why = await eventually(explained, 15, "the second job waiting for room")
    assert why["pending"] and why["reason"]["position"] == 1 and "exec-w" in why["reason"]["message"]
    busy = (await stack.post("/v1/jobs/dry-run", json={"name": "p", "command": ["true"]})).json()
    assert busy["would_start"] is False and busy["reason"]["kind"] in ("capacity", "reserved", "backfill")
    r = await stack.get(f"/v1/jobs/{hog}/why")
    assert r.status_code == 200 and r.json()["pending"] is False

    bad = await stack.post("/v1/jobs/dry-run", json={"name": "p", "command": "true"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "command"
    assert (await stack.get("/v1/jobs/nosuchjob1/why")).status_code == 404
