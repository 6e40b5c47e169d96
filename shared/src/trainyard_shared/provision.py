"""The provision step: declare every stream and bucket of an installation, as the operator.

Services only bind to what this step declared (trainyard_shared.binding); on a server with users
only ``admin`` may create or change a stream (trainyard_shared.natsusers). It runs before the
services: ``trainyard up`` runs it itself, docker-compose as the one-shot ``provision`` service,
Kubernetes as the Job ``trainyard-provision``. Running it again is safe: a stream that exists is
brought back to its config (limits changed by a release, or by someone who should not have).

    TRAINYARD_NATS_URL=nats://127.0.0.1:4222 TRAINYARD_NATS_USER=admin \\
    TRAINYARD_NATS_PASSWORD=... python -m trainyard_shared.provision
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

import nats
from nats.js import JetStreamContext

from trainyard_contracts import Subjects
from trainyard_shared.bus import all_stream_configs, declare
from trainyard_shared.settings import CommonSettings

log = logging.getLogger("trainyard.provision")


async def provision(
    js: JetStreamContext, subjects: Subjects, replicas: int = 1, trigger_subjects: Sequence[str] = ()
) -> list[str]:
    """Create or correct every stream and bucket; returns the stream names. ``trigger_subjects``:
    the operator's allow-list of other systems' subjects, stored in the triggers stream."""
    configs = all_stream_configs(subjects, replicas, trigger_subjects=trigger_subjects)
    await declare(js, configs)
    return [str(config.name) for config in configs]


def connect_options(settings: CommonSettings) -> dict[str, Any]:
    """nats-py's ``connect`` arguments for ``settings``' identity."""
    options: dict[str, Any] = {
        "servers": [url.strip() for url in settings.nats_url.split(",")],
        "inbox_prefix": settings.inbox_prefix,
    }
    if settings.nats_user:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password.get_secret_value() if settings.nats_password else ""
    if settings.nats_creds:
        options["user_credentials"] = str(settings.nats_creds)
    return options


async def provision_with(settings: CommonSettings, timeout: float = 30.0) -> list[str]:
    nc = await nats.connect(
        **connect_options(settings),
        connect_timeout=timeout,
        allow_reconnect=False,
        name="trainyard-provision",
    )
    try:
        return await provision(
            nc.jetstream(timeout=timeout),
            settings.subjects,
            settings.stream_replicas,
            settings.trigger_subjects,
        )
    finally:
        await nc.close()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = CommonSettings()
    try:
        names = asyncio.run(provision_with(settings))
    except Exception as exc:
        log.error(
            "provisioning %s as %s failed: %s: %s",
            settings.nats_url,
            settings.nats_user or "(no user)",
            type(exc).__name__,
            exc,
        )
        return 1
    log.info("declared %d streams and buckets on %s: %s", len(names), settings.nats_url, ", ".join(names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
