"""Dead letters: a message that cannot be parsed, or keeps failing, is parked with its reason.

``DeadLetterMiddleware`` wraps every handler of a broker. A message whose body does not validate
goes to ``<prefix>.dlq.<service>`` at once (redelivering it cannot help); a handler that raises is
nacked for redelivery until ``max_deliver``, and on the last delivery the message is dead-lettered
and acked, so the consumer moves on and the service keeps running.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fast_depends.exceptions import ValidationError as DependsValidationError
from faststream import BaseMiddleware
from faststream.exceptions import AckMessage
from pydantic import ValidationError

from trainyard_contracts import Subjects

log = logging.getLogger("trainyard.deadletter")

DEFAULT_MAX_DELIVER = 5


def delivery_count(msg: Any, *, raw: bool = False) -> int:
    """How often JetStream has delivered ``msg`` (a faststream message, or with ``raw`` a nats-py one)."""
    if not raw:
        msg = getattr(msg, "raw_message", None)
    try:
        return int(msg.metadata.num_delivered)
    except Exception:  # core NATS or in-memory test broker: no metadata
        return 1


def make_dead_letter_middleware(
    subjects: Subjects, service: str, max_deliver: int = DEFAULT_MAX_DELIVER
) -> type[BaseMiddleware]:
    class DeadLetterMiddleware(BaseMiddleware):
        async def consume_scope(self, call_next: Callable[[Any], Awaitable[Any]], msg: Any) -> Any:
            try:
                return await call_next(msg)
            except (
                ValidationError,
                DependsValidationError,
                UnicodeDecodeError,
                ValueError,
                RecursionError,
            ) as exc:
                await self._park(msg, f"invalid message: {short_error(exc)}")
                raise AckMessage() from exc
            except AckMessage:
                raise
            except Exception as exc:
                delivered = delivery_count(msg)
                if delivered < max_deliver or not _is_jetstream(msg):
                    raise
                await self._park(msg, f"failed {delivered} times, last: {short_error(exc)}")
                raise AckMessage() from exc

        async def _park(self, msg: Any, reason: str) -> None:
            await park(self.context.get("broker"), subjects, service, msg.raw_message, reason, body=msg.body)

    return DeadLetterMiddleware


async def park(
    broker: Any, subjects: Subjects, service: str, raw: Any, reason: str, *, body: bytes | None = None
) -> None:
    """Put a message on ``<prefix>.dlq.<service>`` with why, where it came from and how often it
    was delivered (``raw``: the nats-py message). The original's own headers (a reply subject,
    the trace context) stay with it, so a replay is the message it was."""
    headers = kept_headers(getattr(raw, "headers", None))
    headers |= {
        "Trainyard-Reason": reason[:4000],
        "Trainyard-Service": service,
        "Trainyard-Original-Subject": getattr(raw, "subject", "") or "",
        "Trainyard-Deliveries": str(delivery_count(raw, raw=True)),
    }
    # a replayed letter that fails again keeps the id it was first published with
    original_id = headers.get("Trainyard-Original-Msg-Id") or (getattr(raw, "headers", None) or {}).get(
        "Nats-Msg-Id"
    )
    if original_id:
        headers["Trainyard-Original-Msg-Id"] = original_id
    log.warning(
        "dead-lettered a message",
        extra={"service": service, "reason": reason, "subject": headers["Trainyard-Original-Subject"]},
    )
    data = body if body is not None else raw.data
    await broker.publish(data, subjects.dlq(service), headers=headers, stream=subjects.streams.dlq)


# what a dead letter says about itself; the rest of its headers are the original message's
LETTER_HEADERS = frozenset(
    {
        "Trainyard-Reason",
        "Trainyard-Service",
        "Trainyard-Original-Subject",
        "Trainyard-Deliveries",
        "Trainyard-Replayed-From",
    }
)


def kept_headers(headers: dict[str, str] | None) -> dict[str, str]:
    """The headers of a message worth keeping across a dead letter and its replay: not the
    server's own (``Nats-*``: message id, expectations, TTL), not a letter's description."""
    return {
        name: value
        for name, value in (headers or {}).items()
        if not name.lower().startswith("nats-") and name not in LETTER_HEADERS
    }


def _is_jetstream(msg: Any) -> bool:
    raw = getattr(msg, "raw_message", None)
    try:
        return raw is not None and raw.metadata is not None
    except Exception:
        return False


def short_error(exc: BaseException) -> str:
    """An exception in one line, bounded (for logs and dead letters)."""
    text = str(exc).replace("\n", " ")
    return f"{type(exc).__name__}: {text[:1500]}"
