"""The registry's model-alias stack for tests: a real nats-server, the registry service on a real
MLflow SQLite store, and the submission API (over ASGI, with tokens) in this process.

Versions are registered straight into the registry's MLflow store (``register``), as the registry
does when a job succeeds: the alias tests need versions, not jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pickle
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats

from trainyard_registry.app import create_app as registry_app
from trainyard_registry.mlflow_names import ModelRequest
from trainyard_registry.mlflow_store import MlflowModelStore
from trainyard_registry.settings import RegistrySettings
from trainyard_shared.testing.helpers import common_settings, running, serving_http
from trainyard_submission.app import create_app as submission_app
from trainyard_submission.settings import SubmissionSettings

ADMIN_TOKEN = "registry-test-admin-1"


@dataclass
class ModelStack:
    http: httpx.AsyncClient  # the API with the admin token
    api: object
    store: MlflowModelStore
    prefix: str
    nc: nats.NATS
    outputs: Path
    registry: object  # the registry service's app, started (serve it with serving_http, lifespan off)

    def served(self) -> contextlib.AbstractAsyncContextManager[str]:
        """The API on a real socket, for the CLI; its lifespan is the stack's, already running."""
        return serving_http(self.api, lifespan="off")

    def as_token(self, token: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.api)  # type: ignore[arg-type]
        return httpx.AsyncClient(
            transport=transport, base_url="http://api", headers={"Authorization": f"Bearer {token}"}
        )

    async def team_token(self, team: str) -> str:
        queue = await self.http.put(f"/v1/queues/{team}", json={})
        assert queue.status_code in (200, 201), queue.text
        created = await self.http.post("/v1/tokens", json={"team": team})
        assert created.status_code == 201, created.text
        return str(created.json()["token"])

    async def register(
        self, name: str, metrics: dict[str, float], queue: str = "default", **params: str
    ) -> int:
        """A new version of ``name`` with ``metrics``, made by a job of ``queue``."""
        out = self.outputs / uuid.uuid4().hex[:8]
        out.mkdir(parents=True)
        (out / "model.pkl").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
        (out / "metrics.json").write_text(json.dumps(metrics))
        request = ModelRequest(
            job_id="job" + uuid.uuid4().hex[:12],
            attempt=1,
            queue=queue,
            job_name="train",
            model_name=name,
            outputs_dir=out,
            params=dict(params),
            git_repo="https://example.com/ml.git",
            git_commit=uuid.uuid4().hex + uuid.uuid4().hex[:8],
        )
        return (await asyncio.to_thread(self.store.register, request)).version


def new_store(folder: Path) -> MlflowModelStore:
    return MlflowModelStore(f"sqlite:///{folder / 'mlflow.db'}")


@contextlib.asynccontextmanager
async def model_stack(
    nats_url: str,
    prefix: str,
    tmp_path: Path,
    store: MlflowModelStore,
    registry_settings: RegistrySettings | None = None,
) -> AsyncIterator[ModelStack]:
    """``store``: the MLflow store the registry serves (one per test module: creating one runs
    MLflow's migrations, seconds); each test uses model names of its own."""
    common = common_settings(nats_url, prefix, tmp_path / "data")
    tracking = store.tracking_uri
    settings = registry_settings or RegistrySettings()
    registry = registry_app(common, settings.model_copy(update={"tracking_uri": tracking}))
    api = submission_app(common, SubmissionSettings(token=ADMIN_TOKEN))
    async with api.router.lifespan_context(api), running(registry):
        nc = await nats.connect(nats_url)
        transport = httpx.ASGITransport(app=api)
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=auth) as http:
                yield ModelStack(http, api, store, prefix, nc, tmp_path / "outputs", registry)
        finally:
            await nc.drain()
