"""Reading a job's output back from the logs stream, once or following it to the end."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from trainyard_contracts import LogChunk, Subjects


async def read_chunks(
    js: JetStreamContext,
    subjects: Subjects,
    job_id: str,
    attempt: int | None,
    follow: bool,
    finished: Callable[[], Awaitable[bool]],
) -> AsyncIterator[LogChunk]:
    """Chunks in order. Without ``follow``: what is stored now. With it: until ``finished()`` is
    true and nothing more is stored (the executor flushes its last chunk before the end event).
    ``finished`` is asked only when nothing is pending, at most once per fetch wait."""
    subject = subjects.log(job_id, attempt) if attempt is not None else subjects.logs_of(job_id)
    sub = await js.pull_subscribe(
        subject,
        stream=subjects.streams.logs,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=60.0
        ),
    )
    try:
        while True:
            info = await sub.consumer_info()
            pending = info.num_pending or 0
            if pending == 0:
                if not follow:
                    return
                if await finished():
                    # one last look: the final chunk may have landed with the end event
                    if (await sub.consumer_info()).num_pending == 0:
                        return
            try:
                msgs = await sub.fetch(min(max(pending, 1), 256), timeout=0.5 if follow else 2.0)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                yield LogChunk.model_validate_json(msg.data)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
