"""Publishing job events and executor commands: deterministic Nats-Msg-Id, into their stream, acked.

The models are in ``trainyard_contracts`` (events.py, commands.py); this module sends them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Sequence
from typing import Any, NamedTuple

import nats.errors
from faststream.nats import NatsBroker
from nats.js.errors import NotFoundError
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from trainyard_contracts import CancelAttempt, Envelope, StartAttempt, Subjects, msg_id
from trainyard_shared.metrics_labels import subject_shape
from trainyard_shared.natshandle import NatsHandle
from trainyard_shared.tracing import tracing_enabled

MSG_ID = "Nats-Msg-Id"


def trace_headers() -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


class Outgoing(NamedTuple):
    """One publish into a stream: what ``publish_acked`` takes."""

    subject: str
    payload: bytes
    headers: dict[str, str]
    stream: str


class EventPublisher:
    def __init__(self, broker: NatsBroker, subjects: Subjects) -> None:
        self.broker = broker
        self.subjects = subjects
        self.stream = subjects.streams.jobs
        self.tracing = tracing_enabled()

    async def emit(self, event: Envelope, **headers: str) -> Any:
        """Publish and wait for the stream's ack; a duplicate (same msg id) is acked, not stored."""
        return await publish_acked(self.broker, *self.outgoing(event, **headers))

    async def publish_in_order(self, sends: Sequence[Outgoing], timeout: float = 5.0) -> list[Any]:
        """Publish one decision's events and commands in order, acks awaited together."""
        return await publish_in_order(self.broker, sends, timeout)

    async def has_event(self, subject: str) -> bool:
        """Whether the jobs stream still holds a message on ``subject``."""
        try:
            await NatsHandle(self.broker).jetstream.get_last_msg(self.stream, subject)
        except NotFoundError:
            return False
        return True

    async def announced_attempt(self, subject: str) -> int | None:
        """The attempt of the last event the jobs stream holds on ``subject``, None if it holds none."""
        try:
            msg = await NatsHandle(self.broker).jetstream.get_last_msg(self.stream, subject)
        except NotFoundError:
            return None
        return int(json.loads(msg.data or b"{}").get("attempt") or 0)

    def max_payload(self) -> int:
        """The server's limit for one message's body (headers count against it too)."""
        return NatsHandle(self.broker).max_payload

    def outgoing(self, event: Envelope, **headers: str) -> Outgoing:
        """The event as a publish (for ``publish_in_order``). The envelope carries the job's trace
        context too, for readers that drop headers."""
        if event.traceparent is None and self.tracing:
            traceparent = trace_headers().get("traceparent")
            if traceparent:
                event = event.model_copy(update={"traceparent": traceparent})
        return Outgoing(
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
    js = NatsHandle(broker).jetstream
    if not tracing_enabled():
        return await js.publish(subject, payload, stream=stream, headers=headers)
    span_name = f"{subject_shape(subject)} publish"
    with trace.get_tracer("trainyard.publish").start_as_current_span(span_name, kind=SpanKind.PRODUCER):
        return await js.publish(subject, payload, stream=stream, headers={**trace_headers(), **headers})


async def publish_in_order(
    broker: NatsBroker, publishes: Sequence[Outgoing], timeout: float = 5.0
) -> list[Any]:
    """Several publishes of one decision (a job's queued and scheduled events and its start
    command), in flight together: written to the socket at once, their acks awaited together
    (nats-py's ``publish_async``: no request, timer and task per publish), instead of a round
    trip each.

    The order holds: one connection writes them, and the server stores them, in the order given.
    Raises the first error in that order, or ``nats.errors.TimeoutError`` if an ack is missing
    after ``timeout``; the caller's retry publishes all again under the same message ids, which
    the streams drop as duplicates."""
    return await (await publish_begun(broker, publishes, timeout))


async def publish_begun(
    broker: NatsBroker, publishes: Sequence[Outgoing], timeout: float = 5.0
) -> Coroutine[Any, Any, list[Any]]:
    """``publish_in_order`` in two halves: the publishes are written in order when this returns,
    and what it returns checks their acks when awaited (raising as ``publish_in_order`` does), so
    the caller's next sends need not wait a round trip for them."""
    if tracing_enabled():  # one publish span each, as publish_acked records them
        return _done(list(await asyncio.gather(*(publish_acked(broker, *p) for p in publishes))))
    js = NatsHandle(broker).jetstream
    acks = [
        await js.publish_async(p.subject, p.payload, stream=p.stream, headers=dict(p.headers))
        for p in publishes
    ]
    return _acks_of(acks, timeout)


async def _done(results: list[Any]) -> list[Any]:
    return results


async def _acks_of(acks: list[asyncio.Future[Any]], timeout: float) -> list[Any]:
    if not acks:
        return []
    _, missing = await asyncio.wait(acks, timeout=timeout)
    for ack in missing:
        ack.cancel()  # nats-py forgets it (its done callback)
    if missing:
        raise nats.errors.TimeoutError
    return [ack.result() for ack in acks]


class CommandSender:
    def __init__(self, broker: NatsBroker, subjects: Subjects) -> None:
        self.broker = broker
        self.subjects = subjects

    async def send(self, command: StartAttempt | CancelAttempt) -> None:
        await publish_acked(self.broker, *self.outgoing(command))

    def outgoing(self, command: StartAttempt | CancelAttempt) -> Outgoing:
        """The command as a publish (for ``publish_in_order``)."""
        return Outgoing(
            self.subjects.exec_command(command.executor_id, command.type),
            command.model_dump_json().encode(),
            {
                # per executor: a gang split across executors gets one start (or cancel) each
                MSG_ID: msg_id(command.job_id, command.attempt, f"{command.type}@{command.executor_id}"),
                "content-type": "application/json",
            },
            self.subjects.streams.exec,
        )
