"""Submit a job over NATS, without HTTP: how another system hands Trainyard a spec.

The spec is published to the intake stream on ``<prefix>.intake.submit`` with a ``Nats-Msg-Id``
(the stream deduplicates on it, and the submission service maps it to its job for good, so
publishing the same id again answers with the same job) and a ``Trainyard-Reply-To`` inbox on
which the submission service answers ``{accepted, job_id, duplicate, errors}``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from typing import Any

import nats
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NoStreamResponseError

REPLY_HEADER = "Trainyard-Reply-To"
TOKEN_HEADER = "Trainyard-Token"


class IntakeUnavailable(RuntimeError):
    """No intake stream answers on the subject: Trainyard is not running with this prefix."""


def _spec_bytes(spec: str | bytes | Mapping[str, Any]) -> bytes:
    if isinstance(spec, Mapping):
        return json.dumps(dict(spec)).encode()
    return spec.encode() if isinstance(spec, str) else bytes(spec)


async def submit_over_nats(
    nats_url: str,
    spec_text: str | bytes | Mapping[str, Any],
    *,
    prefix: str = "trainyard",
    msg_id: str | None = None,
    timeout: float = 10,
    token: str | None = None,
    **connect_options: Any,
) -> dict[str, Any]:
    """Publish a spec to the intake stream and return the intake's reply.

    ``msg_id`` is the idempotency key (a fresh UUID when absent). ``token`` (an API token) names
    who submits: its queue and the queue's limits apply; without one only a queue that allows
    anonymous bus submissions takes the spec. ``connect_options`` go to
    ``nats.connect`` (``user_credentials=...``, ``user=...``, ``tls=...``). Raises
    :class:`IntakeUnavailable` when no stream takes the message and ``TimeoutError`` when no reply
    comes within ``timeout`` seconds.
    """
    subject = f"{prefix}.intake.submit"
    nc = await nats.connect(nats_url, connect_timeout=timeout, allow_reconnect=False, **connect_options)
    try:
        js = nc.jetstream(timeout=timeout)
        inbox = nc.new_inbox()
        replies = await nc.subscribe(inbox, max_msgs=1)
        headers = {"Nats-Msg-Id": msg_id or uuid.uuid4().hex, REPLY_HEADER: inbox}
        if token is not None:
            headers[TOKEN_HEADER] = token
        try:
            await js.publish(subject, _spec_bytes(spec_text), headers=headers)
        except (NoRespondersError, NoStreamResponseError) as exc:
            raise IntakeUnavailable(
                f"no stream takes {subject}: is Trainyard running on {nats_url} with prefix {prefix!r}?"
            ) from exc
        try:
            msg = await replies.next_msg(timeout=timeout)
        except NatsTimeout as exc:
            raise TimeoutError(
                f"no reply from the submission service within {timeout}s (the spec is in the intake"
                " stream and will still be processed; publish again with the same msg_id to learn"
                " its job id)"
            ) from exc
        reply: dict[str, Any] = json.loads(msg.data)
        return reply
    finally:
        await nc.close()


def submit_over_nats_sync(
    nats_url: str, spec_text: str | bytes | Mapping[str, Any], **kwargs: Any
) -> dict[str, Any]:
    """:func:`submit_over_nats` for code without an event loop."""
    return asyncio.run(submit_over_nats(nats_url, spec_text, **kwargs))
