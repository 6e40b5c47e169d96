"""Submit a job over NATS, without HTTP: how another system hands Trainyard a spec.

The spec is published to the intake stream on ``<prefix>.intake.submit`` with a ``Nats-Msg-Id``
and a ``Trainyard-Reply-To`` inbox on which the submission service answers
``{accepted, job_id, duplicate, errors}``. The submission service maps the id to its job for good
(its idempotency bucket), so publishing the same id again, after a timeout or a lost connection,
answers with the same job and ``duplicate: true``.

The intake stream deduplicates only within its shortest window (100 ms, the server's minimum): a
publish acknowledged ``duplicate`` reached the stream within 100 ms of the same id and was not
stored, so nothing would answer it; it is published again once the window has passed.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from typing import Any

import nats
from nats.errors import ConnectionReconnectingError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError, NotFoundError, ServiceUnavailableError

REPLY_HEADER = "Trainyard-Reply-To"
TOKEN_HEADER = "Trainyard-Token"
# the intake stream's duplicate window (shared/bus.py): a duplicate acknowledgement means "again
# after this long"
DUPLICATE_WINDOW = 0.1
# a stream without a leader (an election in a cluster) answers nothing: asked again after these
RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0)


class IntakeUnavailable(RuntimeError):
    """No intake stream answers on the subject: Trainyard is not running with this prefix."""


def _spec_bytes(spec: str | bytes | Mapping[str, Any]) -> bytes:
    if isinstance(spec, Mapping):
        return json.dumps(dict(spec)).encode()
    return spec.encode() if isinstance(spec, str) else bytes(spec)


def servers(nats_url: str) -> list[str]:
    """``nats://a:4222,nats://b:4222`` as the list nats-py takes (it refuses the joined string)."""
    found = [url.strip() for url in nats_url.split(",") if url.strip()]
    if not found:
        raise ValueError(f"no NATS server in {nats_url!r}")
    return found


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

    ``nats_url``: one server or a comma-separated list (a cluster; the connection moves to another
    server when one goes away). ``msg_id`` is the idempotency key (a fresh UUID when absent): call
    again with the same one after a ``TimeoutError`` to learn the job's id. ``token`` (an API token)
    names who submits: its queue and the queue's limits apply; without one only a queue that allows
    anonymous bus submissions takes the spec. ``connect_options`` go to
    ``nats.connect`` (``user_credentials=...``, ``user=...``, ``tls=...``). Raises
    :class:`IntakeUnavailable` when no stream takes the subject and ``TimeoutError`` when no reply
    comes within ``timeout`` seconds.
    """
    subject = f"{prefix}.intake.submit"
    options: dict[str, Any] = {
        "connect_timeout": min(timeout, 5),
        "allow_reconnect": True,
        "max_reconnect_attempts": 10,
        "reconnect_time_wait": 0.5,
        **connect_options,
    }
    nc = await nats.connect(servers(nats_url), **options)
    try:
        async with asyncio.timeout(timeout):
            js = nc.jetstream(timeout=min(timeout, 5))
            inbox = nc.new_inbox()
            replies = await nc.subscribe(inbox, max_msgs=1)
            headers = {"Nats-Msg-Id": msg_id or uuid.uuid4().hex, REPLY_HEADER: inbox}
            if token is not None:
                headers[TOKEN_HEADER] = token
            await _publish_stored(js, subject, _spec_bytes(spec_text), headers, nats_url, prefix)
            msg = await replies.next_msg(timeout=None)
    except TimeoutError as exc:
        raise TimeoutError(
            f"no reply from the submission service within {timeout}s (the spec may be in the intake"
            " stream and will still be processed; call again with the same msg_id to learn its job id)"
        ) from exc
    finally:
        await nc.close()
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


async def _publish_stored(
    js: JetStreamContext, subject: str, body: bytes, headers: dict[str, str], nats_url: str, prefix: str
) -> None:
    """Publish until the intake stream has stored the message (the caller's deadline bounds it)."""
    attempt = 0
    while True:
        try:
            ack = await js.publish(subject, body, headers=dict(headers))
        except (NoStreamResponseError, NoRespondersError, ServiceUnavailableError):
            await _intake_exists(js, subject, nats_url, prefix)
        except (NatsTimeout, ConnectionReconnectingError):
            pass  # stored or not, the same id is safe to publish again
        else:
            if not ack.duplicate:
                return
            await asyncio.sleep(DUPLICATE_WINDOW)  # the server's window, not a guess: see above
            continue
        await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
        attempt += 1


async def _intake_exists(js: JetStreamContext, subject: str, nats_url: str, prefix: str) -> None:
    """Return when a stream takes ``subject`` (it had no leader for a moment: publish again);
    raise :class:`IntakeUnavailable` when none does."""
    try:
        await js.find_stream_name_by_subject(subject)
    except NotFoundError as exc:
        raise IntakeUnavailable(
            f"no stream takes {subject}: is Trainyard running on {nats_url} with prefix {prefix!r}?"
        ) from exc
    except Exception:  # the JetStream API itself is electing: ask again after the pause
        return


def submit_over_nats_sync(
    nats_url: str, spec_text: str | bytes | Mapping[str, Any], **kwargs: Any
) -> dict[str, Any]:
    """:func:`submit_over_nats` for code without an event loop."""
    return asyncio.run(submit_over_nats(nats_url, spec_text, **kwargs))
