"""Fixtures the tests under tests/ share: the services' common settings and a plain client."""

from __future__ import annotations

import pytest

from trainyard_shared.testkit import Bus, common_settings


@pytest.fixture
def common(nats_server, prefix, tmp_path):
    return common_settings(nats_server.url, prefix, tmp_path / "data")


@pytest.fixture
async def bus(nats_server, prefix):
    async with Bus(nats_server.url, prefix) as b:
        yield b
