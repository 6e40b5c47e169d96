"""Publishing job events: deterministic Nats-Msg-Id, into the jobs stream, acked."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any

from faststream.nats import NatsBroker
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from trainyard_contracts import Envelope, Subjects
from trainyard_shared.metrics_labels import subject_shape
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
        return await publish_acked(
            self.broker,
            event.subject(self.subjects),
            event.model_dump_json().encode(),
            {MSG_ID: event.msg_id(), "content-type": "application/json", **headers},
            self.stream,
        )


async def publish_acked(
    broker: NatsBroker, subject: str, payload: bytes, headers: dict[str, str], stream: str
) -> Any:
    """Publish into ``stream`` and wait for its ack, straight through nats-py's JetStream context.

    The job path's publishes skip faststream's publish chain (its per-message middlewares were a
    measurable share of a service's CPU); what that chain added is done here: the trace context
    goes into the headers, in a publish span, when spans are exported.
    """
    js = broker.config.connection_state.stream
    if not tracing_enabled():
        return await js.publish(subject, payload, stream=stream, headers=headers)
    span_name = f"{subject_shape(subject)} publish"
    with trace.get_tracer("trainyard.publish").start_as_current_span(span_name, kind=SpanKind.PRODUCER):
        return await js.publish(subject, payload, stream=stream, headers={**trace_headers(), **headers})


async def publish_in_order(publishes: Iterable[Awaitable[Any]]) -> list[Any]:
    """Several publishes of one decision (a job's queued and scheduled events and its start
    command), in flight together: one write to the socket and one wait for all the acks instead
    of a round trip each.

    The order holds: each publish is buffered by nats-py before its first real wait and the tasks
    start in the order given, so one connection writes them, and the server stores them, in that
    order. If one fails the others still complete; the first error is raised (the caller's retry
    publishes all again under the same message ids, which the streams drop as duplicates)."""
    return await asyncio.gather(*publishes)
