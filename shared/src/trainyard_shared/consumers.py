"""The one way a service consumes: a durable pull consumer, explicit acks, bounded redelivery.

A handler that raises is nacked and redelivered up to ``max_deliver`` times, then dead-lettered
(see deadletter.py); a message that does not parse is dead-lettered at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from faststream import AckPolicy
from faststream.nats import ConsumerConfig, JStream, PullSub

from trainyard_shared.binding import bind_bus
from trainyard_shared.broker import ServiceBroker
from trainyard_shared.bus import Buckets
from trainyard_shared.deadletter import DEFAULT_MAX_DELIVER
from trainyard_shared.settings import CommonSettings


def durable_consumer(
    sb: ServiceBroker,
    subject: str,
    *,
    stream: JStream,
    durable: str,
    title: str,
    description: str,
    batch: int = 64,
    ack_wait: float = 30,
    max_deliver: int = DEFAULT_MAX_DELIVER,
) -> Callable[[Callable[..., Any]], Any]:
    return sb.broker.subscriber(
        subject,
        stream=stream,
        durable=durable,
        pull_sub=PullSub(batch_size=batch, timeout=0.5),
        config=ConsumerConfig(max_deliver=max_deliver, ack_wait=ack_wait),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title=title,
        description=description,
    )


async def connect_and_bind(sb: ServiceBroker, common: CommonSettings) -> Buckets:
    """Connect, then bind to the streams and buckets (binding.py) before any subscriber does."""
    await sb.broker.connect()
    return await bind_bus(sb.broker, common)
