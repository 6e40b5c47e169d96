"""The broker every service uses: NATS with tracing, Prometheus and dead-letter middlewares."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from faststream.nats import NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from faststream.security import SASLPlaintext
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from trainyard_contracts import Subjects
from trainyard_shared.deadletter import DEFAULT_MAX_DELIVER, make_dead_letter_middleware
from trainyard_shared.metrics_labels import bounded_prometheus_middleware
from trainyard_shared.settings import CommonSettings
from trainyard_shared.tracing import tracing_enabled


@dataclass
class ServiceBroker:
    broker: NatsBroker
    registry: CollectorRegistry
    subjects: Subjects
    service: str = "service"
    tracer_provider: TracerProvider | None = None
    # batch consumers' fetch loops (trainyard_shared.puller.Puller), run beside the broker
    pullers: list[Any] = field(default_factory=list)

    async def start_pullers(self) -> None:
        for puller in self.pullers:
            await puller.start()

    async def stop_pullers(self) -> None:
        for puller in self.pullers:
            await puller.stop()


def make_broker(
    settings: CommonSettings,
    service: str,
    *,
    tracer_provider: TracerProvider | None = None,
    registry: CollectorRegistry | None = None,
    max_deliver: int = DEFAULT_MAX_DELIVER,
) -> ServiceBroker:
    registry = registry or CollectorRegistry()
    subjects = settings.subjects
    security = None
    if settings.nats_user:
        password = settings.nats_password.get_secret_value() if settings.nats_password else ""
        security = SASLPlaintext(username=settings.nats_user, password=password)
    extra: dict[str, Any] = {}
    if settings.nats_creds:
        extra["user_credentials"] = str(settings.nats_creds)
    broker = NatsBroker(
        [url.strip() for url in settings.nats_url.split(",")],
        name=f"trainyard-{service}",
        security=security,
        # the only inbox this user's NATS permissions let it subscribe to (natsusers.inbox_prefix)
        inbox_prefix=settings.inbox_prefix,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        # faststream's per-message access log ("Received"/"Processed") at DEBUG: at INFO it is two
        # log records per message on the job path
        log_level=logging.DEBUG,
        logger=logging.getLogger("trainyard.broker"),  # through the root's JSON handler (logs.py)
        middlewares=(
            # spans only when they go somewhere (an OTLP endpoint is set): spans nobody exports
            # cost CPU on every message
            *([NatsTelemetryMiddleware(tracer_provider=tracer_provider)] if tracing_enabled() else []),
            bounded_prometheus_middleware(registry, f"trainyard-{service}"),
            make_dead_letter_middleware(subjects, service, max_deliver),
        ),
        **extra,
    )
    return ServiceBroker(
        broker=broker, registry=registry, subjects=subjects, service=service, tracer_provider=tracer_provider
    )
