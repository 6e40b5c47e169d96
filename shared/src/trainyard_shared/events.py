"""Publishing job events: deterministic Nats-Msg-Id, into the jobs stream, acked."""

from __future__ import annotations

from typing import Any

from faststream.nats import NatsBroker
from opentelemetry import propagate

from trainyard_contracts import Envelope, Subjects
from trainyard_shared.tracing import tracing_enabled

MSG_ID = "Nats-Msg-Id"


def trace_headers() -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


class EventPublisher:
    def __init__(self, broker: NatsBroker, subjects: Subjects) -> None:
        self.broker = broker
        self.subjects = subjects
        self.stream = subjects.streams.jobs
        self.tracing = tracing_enabled()

    async def emit(self, event: Envelope, **headers: str) -> Any:
        """Publish and wait for the stream's ack; a duplicate (same msg id) is acked, not stored.

        The envelope carries the job's trace context too, for readers that drop headers."""
        if event.traceparent is None and self.tracing:
            traceparent = trace_headers().get("traceparent")
            if traceparent:
                event = event.model_copy(update={"traceparent": traceparent})
        return await self.broker.publish(
            event.model_dump_json().encode(),
            event.subject(self.subjects),
            headers={MSG_ID: event.msg_id(), "content-type": "application/json", **headers},
            stream=self.stream,
        )
