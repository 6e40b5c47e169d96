"""The workflow service's test stack: a real nats-server with the real submission API (over ASGI,
with a token), scheduler, local executor (real processes) and workflow service in this process."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator

import httpx
import nats
import pytest
import uvicorn

from trainyard_contracts.runs import PipelineReply, PipelineRun
from trainyard_executor.app import create_app as executor_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_scheduler.app import create_app as scheduler_app
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_shared.testing.helpers import common_settings, eventually, running
from trainyard_submission.app import create_app as submission_app
from trainyard_submission.settings import SubmissionSettings
from trainyard_workflow.app import create_app as workflow_app
from trainyard_workflow.settings import WorkflowSettings

TOKEN = "workflow-test-token-1"


class WorkflowClient:
    """What the API does: a request on <prefix>.workflow.<kind>, a PipelineReply back; ``http``:
    the submission API itself (over ASGI, with the token)."""

    token = TOKEN

    def __init__(self, nc, prefix, http, api):
        self.nc, self.prefix, self.http, self.api = nc, prefix, http, api

    def served(self):
        """The API on a real socket: ``async with client.served() as url``."""
        return served(self.api)

    async def ask(self, kind: str, **body) -> PipelineReply:
        msg = await self.nc.request(f"{self.prefix}.workflow.{kind}", json.dumps(body).encode(), timeout=30)
        return PipelineReply.model_validate_json(msg.data)

    async def ended(self, run_id: str, timeout: float = 60) -> PipelineRun:
        async def probe():
            reply = await self.ask("status", run_id=run_id)
            return reply.run if reply.run and reply.run.state != "running" else None

        return await eventually(probe, timeout, f"run {run_id} ended")


@contextlib.asynccontextmanager
async def _stack(
    nats_server, prefix, tmp_path, workflow_settings=None, executor_settings=None
) -> AsyncIterator[WorkflowClient]:
    common = common_settings(nats_server.url, prefix, tmp_path / "data")
    api = submission_app(common, SubmissionSettings(token=TOKEN))
    scheduler = scheduler_app(common, SchedulerSettings(tick_seconds=0.2))
    executor = executor_app(
        common,
        executor_settings or ExecutorSettings(id="exec-wf", cpu=4, memory=4096, heartbeat_seconds=0.5),
    )
    workflow = workflow_app(common, workflow_settings or WorkflowSettings(reconcile_seconds=1))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with api.router.lifespan_context(api), running(scheduler), running(executor), running(workflow):
        nc = await nats.connect(nats_server.url)
        transport = httpx.ASGITransport(app=api)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=auth) as http:
                yield WorkflowClient(nc, prefix, http, api)
        finally:
            await nc.drain()


@contextlib.asynccontextmanager
async def served(app) -> AsyncIterator[str]:
    """``app`` on a real socket (127.0.0.1, a free port), for clients that speak plain HTTP; its
    lifespan is the stack's, already running."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_config=None))
    task = asyncio.create_task(server.serve())
    try:

        async def listening():
            return server.started or None

        await eventually(listening, 30, "the API listening")
        (sock,) = [s for srv in server.servers for s in srv.sockets]
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
def workflow_stack(nats_server, prefix, tmp_path):
    """``async with workflow_stack() as client`` (optionally with WorkflowSettings, and
    ExecutorSettings: another backend, other limits)."""
    return functools.partial(_stack, nats_server, prefix, tmp_path)
