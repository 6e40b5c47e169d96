"""A service with a NATS identity binds to what the provision step declared; it never declares.

Against a real nats-server without authentication, so that a declare the service should not make
would succeed and show: without the provision step a binding service declares nothing and stops
with a message naming what is missing; started before the step, it waits and binds.
"""

from __future__ import annotations

import asyncio

import nats
import pytest
from faststream.nats import NatsBroker

from trainyard_contracts import Subjects
from trainyard_shared.binding import NotProvisioned, bind_bus
from trainyard_shared.provision import provision
from trainyard_shared.settings import CommonSettings

pytestmark = pytest.mark.service


def binding_settings(url: str, prefix: str, wait: float) -> CommonSettings:
    return CommonSettings(nats_url=url, prefix=prefix, declare_streams=False, provision_wait_seconds=wait)


async def test_without_the_provision_step_a_service_stops_naming_what_is_missing(nats_server, prefix):
    broker = NatsBroker(nats_server.url)
    async with broker:
        with pytest.raises(NotProvisioned) as raised:
            await bind_bus(broker, binding_settings(nats_server.url, prefix, wait=1.0))
    message = str(raised.value)
    assert f"{prefix.upper()}_JOBS" in message and f"KV_{prefix}_jobs" in message
    assert "python -m trainyard_shared.provision" in message
    nc = await nats.connect(nats_server.url)
    try:
        names = [info.config.name for info in await nc.jetstream().streams_info()]
    finally:
        await nc.close()
    assert not [n for n in names if prefix.upper() in n or prefix in n], "the service declared something"


async def test_a_service_waits_for_the_provision_step_then_binds(nats_server, prefix):
    subjects = Subjects(prefix)
    nc = await nats.connect(nats_server.url)
    try:
        async with NatsBroker(nats_server.url) as broker:
            # the service is up first, as compose and Kubernetes may start both together
            binding = asyncio.create_task(
                bind_bus(broker, binding_settings(nats_server.url, prefix, wait=30.0))
            )
            await provision(nc.jetstream(), subjects)
            buckets = await asyncio.wait_for(binding, 30)
            await buckets.jobs.put("probe", b"1")
            assert (await buckets.jobs.get("probe")).value == b"1"
    finally:
        await nc.close()
