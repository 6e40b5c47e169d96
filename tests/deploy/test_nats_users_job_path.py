"""The per-service NATS users are enough: a job's whole path with every service as its own user.

The five services run in this process (trainyard_shared.testing.helpers) against a real
nats-server started with deploy/nats/nats.conf, after the provision step (as admin), each connected
as its own user (the executor as executor-<id>)
(``CommonSettings(nats_user=..., nats_password=...)``, what TRAINYARD_NATS_USER/PASSWORD set in the
deployments). Another system submits on the bus intake as the ``client`` user and follows the job's
events; the API reads the record, the logs, the dead letters and the models, asks the scheduler why,
and cancels a second job. A service may swallow a refused call (a timeout it retries), so the test
also asserts that the server logged no permission violation at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from trainyard_contracts import IntakeReply, Subjects
from trainyard_executor.app import create_app as executor_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_registry.app import create_app as registry_app
from trainyard_registry.settings import RegistrySettings
from trainyard_scheduler.app import create_app as scheduler_app
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_shared.testing.helpers import eventually, running
from trainyard_submission.app import create_app as submission_app
from trainyard_submission.settings import SubmissionSettings
from trainyard_telemetry.app import create_app as telemetry_app

from .natsconf import as_user, inbox_of, password_for, provisioned, secured_server, violations

pytestmark = [pytest.mark.nats_auth, pytest.mark.service, pytest.mark.local]

S = Subjects("trainyard")
TOKEN = "nats-users-token-0123456789"
PY = sys.executable


@contextlib.asynccontextmanager
async def stack(server_url: str, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    # entered in the test's own task: anyio's cancel scopes must be left by the task that entered them
    data = tmp_path / "data"
    api = submission_app(as_user(server_url, "submission", data), SubmissionSettings(token=TOKEN))
    scheduler = scheduler_app(
        as_user(server_url, "scheduler", data), SchedulerSettings(tick_seconds=0.2, replica_id="scheduler-0")
    )
    executor = executor_app(
        as_user(server_url, "executor-exec-auth", data),
        ExecutorSettings(id="exec-auth", cpu=2, memory=4096, gpu=0, heartbeat_seconds=0.5, grace_seconds=2),
    )
    registry = registry_app(
        as_user(server_url, "registry", data),
        RegistrySettings(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
    )
    telemetry = telemetry_app(as_user(server_url, "telemetry", data))
    async with (
        api.router.lifespan_context(api),
        running(scheduler),
        running(executor),
        running(registry),
        running(telemetry),
    ):
        transport = httpx.ASGITransport(app=api)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers) as http:
            yield http, telemetry


async def submit_over_the_bus(js: Any, nc: Any, spec: dict[str, Any], msg_id: str) -> IntakeReply:
    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox)
    await js.publish(
        S.intake_submit,
        json.dumps(spec).encode(),
        headers={"Nats-Msg-Id": msg_id, "Trainyard-Reply-To": inbox},
    )
    reply = IntakeReply.model_validate_json((await replies.next_msg(timeout=30)).data)
    await replies.unsubscribe()
    return reply


async def event_types(js: Any, job_id: str, until: set[str], timeout: float = 60) -> list[str]:
    """The job's events as another system sees them (an ordered consumer), until ``until`` are seen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    sub = await js.subscribe(S.job_events(job_id), ordered_consumer=True)
    seen: list[str] = []
    try:
        while not until <= set(seen):
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"events {sorted(until)} not all seen within {timeout}s: {seen}")
            try:
                msg = await sub.next_msg(timeout=min(left, 1.0))
            except nats.errors.TimeoutError:
                continue
            seen.append(json.loads(msg.data)["type"])
    finally:
        await sub.unsubscribe()
    return seen


def counted(telemetry: Any, event_type: str) -> float:
    metrics = telemetry.context.get("telemetry_metrics")
    for family in metrics.events.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("type") == event_type:
                return float(sample.value)
    return 0.0


async def test_a_job_succeeds_with_every_service_as_its_own_nats_user(tmp_path):
    code = (
        "import os; print('hello as', os.environ['TRAINYARD_JOB_ID']);"
        "open(os.path.join(os.environ['TRAINYARD_OUTPUT_DIR'], 'model.txt'), 'w').write('w')"
    )
    spec = {
        "name": "perm-job",
        "command": [PY, "-c", code],
        "outputs": {"model": "perm-model", "path": "out"},
    }
    with secured_server(tmp_path / "store") as server:
        await provisioned(server)  # the operator declares the streams and buckets; services bind
        async with stack(server.url, tmp_path) as (http, telemetry):
            client = await nats.connect(
                server.url, user="client", password=password_for("client"), inbox_prefix=inbox_of("client")
            )
            try:
                js = client.jetstream()
                reply = await submit_over_the_bus(js, client, spec, "perm-intake-1")
                assert reply.accepted, reply.errors
                job_id = reply.job_id
                seen = await event_types(js, job_id, {"succeeded", "model_registered"})
                assert seen[:5] == ["submitted", "queued", "scheduled", "running", "succeeded"]
                assert "model_registered" in seen

                record = (await http.get(f"/v1/jobs/{job_id}")).json()
                assert record["state"] == "succeeded" and record["model"]["name"] == "perm-model"
                logs = await http.get(f"/v1/jobs/{job_id}/logs")
                assert logs.status_code == 200 and f"hello as {job_id}" in logs.text
                models = (await http.get("/v1/models", params={"name": "perm-model"})).json()["models"]
                assert [m["version"] for m in models] == [1]
                assert (await http.get("/v1/dlq")).json() == {"letters": []} or (
                    await http.get("/v1/dlq")
                ).status_code == 200

                # a long job: the scheduler explains it, then the API cancels it through the bus
                sleeper = await http.post(
                    "/v1/jobs", json={"name": "sleeper", "command": [PY, "-c", "import time; time.sleep(60)"]}
                )
                sleeper_id = sleeper.json()["job_id"]

                async def running_now():
                    r = (await http.get(f"/v1/jobs/{sleeper_id}")).json()
                    return r if r["state"] == "running" else None

                await eventually(running_now, 60, "the second job running")
                why = await http.get(f"/v1/jobs/{sleeper_id}/why")
                assert why.status_code == 200 and why.json()["pending"] is False
                assert (await http.post(f"/v1/jobs/{sleeper_id}/cancel")).status_code == 202

                async def cancelled():
                    r = (await http.get(f"/v1/jobs/{sleeper_id}")).json()
                    return r if r["state"] == "cancelled" else None

                await eventually(cancelled, 60, "the second job cancelled")

                async def telemetry_counted():
                    return counted(telemetry, "cancelled") >= 1 and counted(telemetry, "succeeded") >= 1

                await eventually(telemetry_counted, 30, "telemetry counting both outcomes")
            finally:
                await client.close()
        refused = violations(server)
    assert not refused, "a service was refused by NATS:\n" + "\n".join(refused)
