"""The submission app against the session's real nats-server, driven in-process over ASGI."""

from __future__ import annotations

import httpx
import nats
import pytest

from trainyard_shared.settings import CommonSettings
from trainyard_submission.app import create_app
from trainyard_submission.settings import SubmissionSettings

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 64 * 1024


@pytest.fixture
async def api(nats_server, prefix, tmp_path):
    common = CommonSettings(nats_url=nats_server.url, prefix=prefix, data_dir=tmp_path / "d")
    app = create_app(common, SubmissionSettings(token=TOKEN, max_body_bytes=MAX_BODY))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture
async def js(nats_server):
    nc = await nats.connect(nats_server.url)
    yield nc.jetstream()
    await nc.drain()
