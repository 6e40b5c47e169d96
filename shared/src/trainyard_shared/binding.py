"""How a service meets the streams and buckets at start-up: it binds, it does not declare.

The provision step (trainyard_shared.provision) declares them as the operator. A service with a
NATS identity only looks them up, waiting a bounded time for the step to finish (compose and
Kubernetes may start both together), and stops with a message naming what is missing. A service
that connects without one (a development server where anyone is admin, and the service tests)
declares them itself, as every service did before the provision step existed
(``TRAINYARD_DECLARE_STREAMS`` overrides either way).
"""

from __future__ import annotations

import asyncio
import logging

from faststream.nats import NatsBroker
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from trainyard_contracts import Subjects
from trainyard_shared.broker import ServiceBroker
from trainyard_shared.bus import Buckets, all_stream_configs, ensure_streams, open_buckets
from trainyard_shared.natshandle import NatsHandle
from trainyard_shared.settings import CommonSettings

log = logging.getLogger("trainyard.binding")


class NotProvisioned(RuntimeError):
    """Streams or buckets the service needs do not exist: the provision step has not run."""

    def __init__(self, missing: list[str], subjects: Subjects, waited: float) -> None:
        self.missing = missing
        super().__init__(
            f"streams or buckets missing after {waited:.0f}s: {', '.join(missing)} (prefix"
            f" {subjects.prefix!r}); run the provision step as the NATS operator user:"
            " `python -m trainyard_shared.provision` with TRAINYARD_NATS_USER=admin"
        )


async def missing_streams(js: JetStreamContext, subjects: Subjects) -> list[str]:
    missing = []
    for config in all_stream_configs(subjects):
        try:
            await js.stream_info(str(config.name))
        except NotFoundError:
            missing.append(str(config.name))
    return missing


async def wait_provisioned(js: JetStreamContext, subjects: Subjects, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    logged = False
    while missing := await missing_streams(js, subjects):
        if loop.time() >= deadline:
            raise NotProvisioned(missing, subjects, timeout)
        if not logged:
            log.warning("waiting for the provision step", extra={"missing": missing})
            logged = True
        await asyncio.sleep(0.5)


async def bind_bus(broker: NatsBroker, common: CommonSettings) -> Buckets:
    """On a connected broker: declare (without an identity) or wait for the provision step, then
    bind to the buckets."""
    subjects = common.subjects
    if common.declares_streams:
        await ensure_streams(
            broker, subjects, common.stream_replicas, trigger_subjects=common.trigger_subjects
        )
        return await open_buckets(broker, subjects, common.stream_replicas)
    await wait_provisioned(NatsHandle(broker).jetstream, subjects, common.provision_wait_seconds)
    return await open_buckets(broker, subjects, declare_them=False)


async def connect_and_bind(sb: ServiceBroker, common: CommonSettings) -> Buckets:
    """Connect, then bind to the streams and buckets before any subscriber does: every service's
    first start-up step."""
    await sb.broker.connect()
    return await bind_bus(sb.broker, common)
