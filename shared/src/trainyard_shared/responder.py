"""Answering the API's requests (request/reply) in a service's queue group: the raw body in, a
pydantic reply out on the asker's reply subject.

The body is passed raw, so a request that is not JSON is answered (400 with the field) by the
service's own parser, not dead-lettered unanswered; ``no_reply`` because the answer is published
here, with ``exclude_none`` (replies stay small)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from faststream.nats.annotations import NatsMessage
from pydantic import BaseModel

from trainyard_shared.broker import ServiceBroker


def answer_requests(
    sb: ServiceBroker,
    subject: str,
    queue: str,
    title: str,
    description: str,
    answer: Callable[[bytes], Awaitable[BaseModel]],
) -> None:
    @sb.broker.subscriber(subject, queue=queue, title=title, no_reply=True, description=description)
    async def respond(message: NatsMessage) -> None:
        reply = await answer(message.body)
        if message.reply_to:
            await sb.broker.publish(reply.model_dump_json(exclude_none=True).encode(), message.reply_to)
