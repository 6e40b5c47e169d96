"""MLflow's own events on the bus: a real ``mlflow server`` (SQLite) with a webhook created by
MLflow's own client, calling the registry service's receiver over HTTP; what is changed in MLflow
directly arrives on ``<prefix>.model.<name>.<event>``, in the alias history and in the audit
stream as ``mlflow``. Deliveries not signed with the secret, too old or too large are refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient
from pydantic import SecretStr

from services.registry.tests.modelstack import model_stack
from trainyard_registry.mlflow_store import MlflowModelStore
from trainyard_registry.settings import RegistrySettings
from trainyard_registry.webhooks import signature
from trainyard_shared.natsserver import free_port
from trainyard_shared.testing.helpers import (
    common_settings,
    eventually,
    running,
    serving_http,
    version_in_mlflow,
)
from trainyard_workflow.app import create_app as workflow_app
from trainyard_workflow.settings import WorkflowSettings

pytestmark = [pytest.mark.service, pytest.mark.registry, pytest.mark.timeout(300)]
SECRET = "webhook-test-secret-" + uuid.uuid4().hex
EVENTS = [
    "registered_model.created",
    "model_version.created",
    "model_version_alias.created",
    "model_version_alias.deleted",
]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` on SQLite and a free loopback port (one worker, no job runner: ~10 s)."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        MLFLOW_DISABLE_TELEMETRY="true",
        # the receiver is http on loopback: MLflow refuses both by default (SSRF protection)
        MLFLOW_WEBHOOK_ALLOWED_SCHEMES="http,https",
        MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS="true",
        MLFLOW_WEBHOOK_CACHE_TTL="1",  # a webhook created now is used by the next change
    )
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = (folder / "server.log").open("wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (folder / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not answer /health in 120 s"
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and its workers: the group it leads
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
        log.close()


@pytest.fixture
def webhook_stack(nats_server, prefix, tmp_path, mlflow_server):
    """The registry (receiver on, with SECRET) and the API, on the MLflow server's store."""
    settings = RegistrySettings(webhook_secret=SecretStr(SECRET))
    return model_stack(nats_server.url, prefix, tmp_path, MlflowModelStore(mlflow_server), settings)


class Received:
    """What the models stream holds on ``<prefix>.model.<name>.>`` (an ordered consumer: stored
    messages only, so a repeat the stream dropped as a duplicate is not counted)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict]] = []

    async def on(self, msg) -> None:
        self.messages.append((msg.subject, json.loads(msg.data)))

    def of(self, event: str) -> list[dict]:
        return [body for subject, body in self.messages if subject.endswith("." + event)]


async def webhook_and_version(tracking: str, registry_url: str, name: str) -> tuple[MlflowClient, str]:
    """With MLflow's own client: the webhook to the registry's receiver, then ``name`` and a version
    of it made in MLflow; the client and the version."""
    client = MlflowClient(tracking_uri=tracking)
    await asyncio.to_thread(
        client.create_webhook, f"trainyard-{name}", f"{registry_url}/mlflow/webhook", EVENTS, secret=SECRET
    )
    await asyncio.to_thread(client.create_registered_model, name)
    return client, await asyncio.to_thread(version_in_mlflow, client, name)


async def test_changes_made_in_mlflow_arrive_on_the_bus_in_the_alias_history_and_the_audit(
    webhook_stack, mlflow_server
) -> None:
    name = f"wh-{uuid.uuid4().hex[:8]}"
    received = Received()
    async with webhook_stack as s, serving_http(s.registry, lifespan="off") as registry_url:
        await s.nc.jetstream().subscribe(f"{s.prefix}.model.{name}.>", cb=received.on, ordered_consumer=True)
        client, version = await webhook_and_version(mlflow_server, registry_url, name)
        await asyncio.to_thread(client.set_registered_model_alias, name, "production", version)

        async def alias_set():
            return received.of("model_version_alias_created")

        told = (await eventually(alias_set, timeout=60, what="the alias event on the bus"))[0]
        assert (told["name"], told["alias"], told["version"]) == (name, "production", int(version))
        assert told["by_trainyard"] is False and told["delivery_id"]
        assert received.of("registered_model_created") and received.of("model_version_created")

        # the alias history and the audit stream know who: MLflow
        shown = (await s.http.get(f"/v1/models/{name}/aliases/production")).json()
        assert (shown["state"]["version"], shown["state"]["by"]) == (int(version), "mlflow")
        entries = (await s.http.get("/v1/audit", params={"model": name})).json()["entries"]
        assert [(e["action"], e["actor"]) for e in entries] == [
            ("model.version_create", "mlflow"),
            ("model.promote", "mlflow"),
        ]

        # Trainyard's own promotion is told back by MLflow too: on the bus as Trainyard's, no
        # second history entry nor an audit entry by mlflow
        staged = await s.http.post(f"/v1/models/{name}/aliases/staging", json={"version": int(version)})
        assert staged.status_code == 200, staged.text

        async def staging_told():
            return [m for m in received.of("model_version_alias_created") if m["alias"] == "staging"]

        assert (await eventually(staging_told, timeout=60, what="staging on the bus"))[0][
            "by_trainyard"
        ] is True

        await asyncio.to_thread(client.delete_registered_model_alias, name, "production")

        async def deleted():
            return received.of("model_version_alias_deleted")

        await eventually(deleted, timeout=60, what="the alias deletion on the bus")
        entries = (await s.http.get("/v1/audit", params={"model": name})).json()["entries"]
        assert [(e["action"], e["actor"]) for e in entries] == [
            ("model.version_create", "mlflow"),
            ("model.promote", "mlflow"),
            ("model.promote", "api"),
            ("model.alias_delete", "mlflow"),
        ]
        gone = await s.http.get(f"/v1/models/{name}/aliases/production")
        assert gone.status_code == 404


@pytest.mark.workflow
async def test_an_alias_set_in_mlflow_starts_the_pipeline_of_a_trigger_on_that_alias(
    webhook_stack, mlflow_server, nats_server, prefix, tmp_path
) -> None:
    """MLflow's own client sets ``production``; its webhook reaches the registry, the bus carries
    ``model.<name>.model_version_alias_created``, and the workflow service's trigger filtered on
    that alias starts its pipeline with the version as a parameter. ``staging``, set the same way
    first, is filtered out."""
    name = f"wh-{uuid.uuid4().hex[:8]}"
    common = common_settings(nats_server.url, prefix, tmp_path / "workflow")
    trigger = {
        "name": f"deploy-{name}",
        "subject": f"{prefix}.model.{name}.model_version_alias_created",
        "filter": "alias == 'production'",
        "params": {"version": "to_string(version)"},
        "pipeline": {
            "name": "deploy",
            "params": {"version": "0"},
            "steps": [
                {"name": "deploy", "job": {"name": "deploy", "command": ["echo", "v${{ params.version }}"]}}
            ],
        },
    }
    async with (
        webhook_stack as s,
        serving_http(s.registry, lifespan="off") as registry_url,
        running(workflow_app(common, WorkflowSettings(reconcile_seconds=1))),
    ):
        created = await s.http.post("/v1/triggers", json=trigger)
        assert created.status_code == 201, created.text
        client, version = await webhook_and_version(mlflow_server, registry_url, name)
        await asyncio.to_thread(client.set_registered_model_alias, name, "staging", version)
        await asyncio.to_thread(client.set_registered_model_alias, name, "production", version)

        async def fired():
            record = (await s.http.get(f"/v1/triggers/deploy-{name}")).json()
            return record if record["fired"] else None

        record = await eventually(fired, timeout=90, what="the trigger's run")
        assert record["filtered"] >= 1  # staging: an alias event, not the one the filter wants
        run = (await s.http.get(f"/v1/pipelines/{record['last_run_id']}")).json()
        assert run["spec"]["params"]["version"] == version, run
        assert run["spec"]["steps"][0]["job"]["command"] == ["echo", f"v{version}"]
        assert run["submitted_by"] == f"trigger:deploy-{name}"


async def test_deliveries_not_signed_with_the_secret_too_old_or_too_large_are_refused(
    webhook_stack,
) -> None:
    """Signed as MLflow documents it (mlflow.webhooks.delivery: HMAC-SHA256 over
    ``<delivery id>.<timestamp>.<body>``, ``v1,<base64>``), posted over real HTTP."""
    name = f"wh-{uuid.uuid4().hex[:8]}"
    received = Received()

    def delivery(body: str, secret: str = SECRET, sent: int | None = None) -> dict[str, str]:
        delivery_id, stamp = uuid.uuid4().hex, str(sent if sent is not None else int(time.time()))
        return {
            "Content-Type": "application/json",
            "X-MLflow-Delivery-Id": delivery_id,
            "X-MLflow-Timestamp": stamp,
            "X-MLflow-Signature": signature(secret, delivery_id, stamp, body),
        }

    body = json.dumps(
        {
            "entity": "model_version_alias",
            "action": "created",
            "timestamp": "2026-12-03T10:00:00+00:00",
            "data": {"name": name, "alias": "production", "version": "1"},
        }
    )
    async with webhook_stack as s, serving_http(s.registry, lifespan="off") as registry_url:
        await s.nc.jetstream().subscribe(f"{s.prefix}.model.{name}.>", cb=received.on, ordered_consumer=True)
        url = f"{registry_url}/mlflow/webhook"
        async with httpx.AsyncClient(timeout=30) as http:
            forged = await http.post(url, content=body, headers=delivery(body, secret="not-the-secret"))
            assert forged.status_code == 401 and "does not match" in forged.json()["detail"]
            unsigned = {k: v for k, v in delivery(body).items() if k != "X-MLflow-Signature"}
            assert (await http.post(url, content=body, headers=unsigned)).status_code == 401
            # signed for another body: the signature covers the body
            other = body.replace("production", "staging")
            assert (await http.post(url, content=other, headers=delivery(body))).status_code == 401
            stale = await http.post(url, content=body, headers=delivery(body, sent=int(time.time()) - 3600))
            assert stale.status_code == 401 and "X-MLflow-Timestamp" in stale.json()["detail"]
            huge = json.dumps({"entity": "x", "action": "y", "data": {"pad": "x" * 70_000}})
            assert (await http.post(url, content=huge, headers=delivery(huge))).status_code == 413
            prompt = json.dumps({"entity": "prompt", "action": "created", "data": {"name": name}})
            assert (await http.post(url, content=prompt, headers=delivery(prompt))).status_code == 422
            assert (await http.get(url)).status_code == 405
            # nothing refused reached the bus, the history or the audit stream
            assert received.messages == []
            assert (await s.http.get("/v1/audit", params={"model": name})).json()["entries"] == []

            # the same body signed with the secret is bridged, once however often MLflow retries it
            headers = delivery(body)
            for _ in range(2):
                accepted = await http.post(url, content=body, headers=headers)
                assert accepted.status_code == 200, accepted.text

        async def told():
            return received.of("model_version_alias_created")

        assert (await eventually(told, timeout=30, what="the signed delivery on the bus"))[0]["name"] == name
        entries = (await s.http.get("/v1/audit", params={"model": name})).json()["entries"]
        assert [(e["action"], e["actor"]) for e in entries] == [("model.promote", "mlflow")]
    assert len(received.of("model_version_alias_created")) == 1


def test_the_receiver_is_off_without_a_secret(tmp_path: Path) -> None:
    from trainyard_registry.app import create_app

    app = create_app(settings=RegistrySettings(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}"))
    assert "/mlflow/webhook" not in [path for path, _ in app.routes]
