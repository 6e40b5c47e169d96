"""A request that times out waiting for NATS (overload, a broker away) is answered 503 with
Retry-After and how to retry safely, not a bare 500 (seen under overload in the benchmark)."""

from __future__ import annotations

import httpx
import nats.errors
import pytest
from fastapi import FastAPI

from trainyard_submission.api import install_error_handlers

pytestmark = pytest.mark.unit


async def test_a_nats_timeout_is_a_503_that_says_how_to_retry():
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/jobs")
    async def submit() -> None:
        raise nats.errors.TimeoutError

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        response = await client.post("/v1/jobs", content=b"{}")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.headers["content-type"] == "application/problem+json"
    assert "Idempotency-Key" in response.json()["detail"]
