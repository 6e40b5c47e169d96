"""Model aliases and the audit stream with every service as its own NATS user (deploy/nats/nats.conf,
after the provision step as admin): a promotion goes API -> registry -> MLflow -> audit stream
with no permission violation, and no service's user (nor the operator) can delete, purge or
rewrite what the audit stream holds."""

from __future__ import annotations

import asyncio
import json
import pickle

import httpx
import nats
import pytest

from trainyard_contracts import Subjects
from trainyard_registry.app import create_app as registry_app
from trainyard_registry.mlflow_names import ModelRequest
from trainyard_registry.mlflow_store import MlflowModelStore
from trainyard_registry.settings import RegistrySettings
from trainyard_shared.testing.helpers import running
from trainyard_submission.app import create_app as submission_app
from trainyard_submission.settings import SubmissionSettings

from .natsconf import as_user, inbox_of, password_for, provisioned, secured_server, violations

pytestmark = [pytest.mark.nats_auth, pytest.mark.service, pytest.mark.registry, pytest.mark.security]
S = Subjects("trainyard")
TOKEN = "a" * 24


def register(store: MlflowModelStore, tmp_path, job_id: str, accuracy: float) -> int:
    out = tmp_path / job_id
    out.mkdir()
    (out / "model.pkl").write_bytes(pickle.dumps([1]))
    (out / "metrics.json").write_text(json.dumps({"accuracy": accuracy}))
    request = ModelRequest(
        job_id=job_id,
        attempt=1,
        queue="default",
        job_name="train",
        model_name="perm-model",
        outputs_dir=out,
        params={},
        git_repo=None,
        git_commit=None,
    )
    return store.register(request).version


async def connect_as(server, user: str) -> nats.NATS:
    return await nats.connect(
        server.url,
        user=user,
        password=password_for(user),
        inbox_prefix=inbox_of(user),
        max_reconnect_attempts=0,
    )


async def test_promotions_are_audited_and_no_user_can_remove_or_rewrite_an_entry(tmp_path):
    data = tmp_path / "data"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = await asyncio.to_thread(MlflowModelStore, tracking)
    v1 = await asyncio.to_thread(register, store, tmp_path, "jobpermalias01", 0.9)
    v2 = await asyncio.to_thread(register, store, tmp_path, "jobpermalias02", 0.95)
    with secured_server(tmp_path / "store") as server:
        await provisioned(server)
        api = submission_app(as_user(server.url, "submission", data), SubmissionSettings(token=TOKEN))
        registry = registry_app(
            as_user(server.url, "registry", data), RegistrySettings(tracking_uri=tracking)
        )
        async with api.router.lifespan_context(api), running(registry):
            transport = httpx.ASGITransport(app=api)
            auth = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=auth) as http:
                for version in (v1, v2):
                    promoted = await http.post(
                        "/v1/models/perm-model/aliases/production", json={"version": version}
                    )
                    assert promoted.status_code == 200, promoted.text
                back = await http.post("/v1/models/perm-model/aliases/production/rollback")
                assert back.status_code == 200, back.text
                # the submission service's own changes, as its own user
                assert (await http.put("/v1/queues/perm-team", json={})).status_code == 201
                entries = (await http.get("/v1/audit")).json()["entries"]
        actions = ["model.promote", "model.promote", "model.rollback", "queue.put"]
        assert [e["action"] for e in entries] == actions
        assert [e["service"] for e in entries] == ["registry"] * 3 + ["submission"]
        assert violations(server) == []

        stream = S.streams.audit
        admin = await connect_as(server, "admin")
        try:
            before = (await admin.jetstream().stream_info(stream)).state.messages
            assert before == 4
            for user in ("registry", "submission"):
                nc = await connect_as(server, user)
                js = nc.jetstream(timeout=1)
                try:
                    with pytest.raises(Exception):  # noqa: B017 - refused: a permission violation, no answer
                        await js.delete_msg(stream, 1)
                    with pytest.raises(Exception):  # noqa: B017
                        await js.purge_stream(stream)
                    with pytest.raises(Exception):  # noqa: B017
                        await js.delete_stream(stream)
                finally:
                    await nc.close()
            # a service appends as itself only: the submission user cannot write the registry's subject
            nc = await connect_as(server, "submission")
            try:
                with pytest.raises(Exception):  # noqa: B017
                    await nc.jetstream(timeout=1).publish(S.audit("registry", "model_promote"), b"{}")
            finally:
                await nc.close()
            # the stream itself refuses removals, whoever asks: the operator too
            ajs = admin.jetstream(timeout=5)
            with pytest.raises(nats.js.errors.Error):
                await ajs.delete_msg(stream, 1)
            with pytest.raises(nats.js.errors.Error):
                await ajs.purge_stream(stream)
            info = await ajs.stream_info(stream)
            assert info.state.messages == before
            assert info.config.deny_delete and info.config.deny_purge
        finally:
            await admin.close()


async def test_a_change_made_in_mlflow_reaches_the_bus_as_the_registry_user(tmp_path):
    """MLflow's webhook (a delivery signed as mlflow.webhooks.delivery signs it) through the
    registry's receiver, with the registry as its deployed NATS user: on the models stream and in
    the audit stream, no permission violation."""
    import time
    import uuid

    from pydantic import SecretStr

    from trainyard_registry.webhooks import signature
    from trainyard_shared.testing.helpers import serving_http

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    body = json.dumps(
        {
            "entity": "model_version_alias",
            "action": "created",
            "data": {"name": "perm-hook", "alias": "production", "version": "3"},
        }
    )
    delivery, stamp = uuid.uuid4().hex, str(int(time.time()))
    headers = {
        "X-MLflow-Delivery-Id": delivery,
        "X-MLflow-Timestamp": stamp,
        "X-MLflow-Signature": signature("hook-secret", delivery, stamp, body),
    }
    with secured_server(tmp_path / "store") as server:
        await provisioned(server)
        settings = RegistrySettings(tracking_uri=tracking, webhook_secret=SecretStr("hook-secret"))
        registry = registry_app(as_user(server.url, "registry", tmp_path / "data"), settings)
        async with running(registry), serving_http(registry, lifespan="off") as url:
            async with httpx.AsyncClient(timeout=30) as http:
                answer = await http.post(f"{url}/mlflow/webhook", content=body, headers=headers)
        assert answer.status_code == 200, answer.text
        admin = await connect_as(server, "admin")
        try:
            js = admin.jetstream(timeout=5)
            told = await js.get_last_msg(
                S.streams.models, S.model_event("perm-hook", "model_version_alias_created")
            )
            assert json.loads(told.data)["delivery_id"] == delivery
            entry = await js.get_last_msg(S.streams.audit, S.audit("registry", "model_promote"))
            assert json.loads(entry.data)["actor"] == "mlflow"
        finally:
            await admin.close()
        assert violations(server) == []
