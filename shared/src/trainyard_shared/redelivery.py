"""What a failed message deserves: another try later, another try now, or the dead-letter stream.

A handler can fail because the bus could not answer for a moment (a clustered stream or bucket
electing a leader answers nothing: ``NoStreamResponseError``; a request times out; a connection is
being re-established) or because of the message itself. The first is no reason to give up on the
message: it is redelivered after a delay that grows from ``FIRST_DELAY`` to ``LONGEST_DELAY``
(0.5 s, 1, 2, 4 ... 30 s: an election takes seconds) and it does not count against the message's
budget of failures. The second is redelivered at once up to ``max_deliver`` failures, then
dead-lettered, as before.

The server's own bound on deliveries (the consumer's ``max_deliver``) is ``TRANSIENT_MAX_DELIVER``,
about 25 minutes of growing delays: a message still failing then is dead-lettered whatever the
reason, so redelivery stays bounded. Failures are counted in the consumer's memory, per stream
sequence (the server counts deliveries, not their causes); a restart forgets the count, which the
server's bound still caps.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from nats.errors import (
    ConnectionClosedError,
    ConnectionReconnectingError,
    NoRespondersError,
    OutboundBufferLimitError,
    StaleConnectionError,
)
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

FIRST_DELAY = 0.5
LONGEST_DELAY = 30.0
TRANSIENT_MAX_DELIVER = 60
# failure counts kept per consumer: messages failing at the same moment; beyond, the oldest go
REMEMBERED = 10_000

_TRANSIENT_TYPES = (
    NoStreamResponseError,  # no stream answered: no leader (an election), or a server going away
    NoRespondersError,
    ServiceUnavailableError,
    TimeoutError,  # nats-py's TimeoutError and asyncio's are this one
    ConnectionClosedError,
    ConnectionReconnectingError,
    StaleConnectionError,
    OutboundBufferLimitError,
    ConnectionError,
)
# JetStream API errors that say "not now" rather than "not this": 503 (no leader, no quorum),
# 408 (the request expired), and 10008 (JetStream temporarily unavailable)
_TRANSIENT_STATUS = frozenset({503, 408})
_TRANSIENT_ERR_CODES = frozenset({10008})


def is_transient(exc: BaseException) -> bool:
    """True when ``exc``, or an error it was raised from, says the bus could not answer now."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _TRANSIENT_TYPES):
            return True
        # (some subclasses, KeyWrongLastSequenceError, never set the codes)
        if isinstance(current, APIError) and (
            getattr(current, "code", None) in _TRANSIENT_STATUS
            or getattr(current, "err_code", None) in _TRANSIENT_ERR_CODES
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


def retry_delay(deliveries: int) -> float:
    """The delay before the next delivery after a transient failure of delivery ``deliveries``."""
    return float(min(LONGEST_DELAY, FIRST_DELAY * 2 ** max(0, deliveries - 1)))


@dataclass(frozen=True)
class Verdict:
    park: bool  # dead-letter now (and ack)
    delay: float | None = None  # else: nak, redelivered after this (None: at once)
    reason: str = ""
    transient: bool = False


class FailureBudget:
    """The failures on a message's own merits, per stream sequence, for one consumer."""

    def __init__(self, max_deliver: int, server_max_deliver: int = TRANSIENT_MAX_DELIVER) -> None:
        self.max_deliver = max_deliver
        self.server_max_deliver = max(server_max_deliver, max_deliver)
        self._failures: OrderedDict[int, int] = OrderedDict()

    def judge(self, sequence: int | None, deliveries: int, exc: BaseException, error: str) -> Verdict:
        """``sequence``: the message's stream sequence (None: unknown); ``deliveries``: the
        server's count, this one included; ``error``: ``exc`` in short, for the reason."""
        last_chance = deliveries >= self.server_max_deliver
        if is_transient(exc):
            if not last_chance:
                return Verdict(park=False, delay=retry_delay(deliveries), transient=True)
            self.forget(sequence)
            return Verdict(
                park=True, reason=f"failed {deliveries} times (the bus unavailable), last: {error}"
            )
        failures = self._count(sequence, deliveries)
        if failures < self.max_deliver and not last_chance:
            return Verdict(park=False)
        self.forget(sequence)
        return Verdict(park=True, reason=f"failed {failures} times, last: {error}")

    def forget(self, sequence: int | None) -> None:
        """The message is finished (handled or parked)."""
        if sequence is not None:
            self._failures.pop(sequence, None)

    def _count(self, sequence: int | None, deliveries: int) -> int:
        if sequence is None:
            return deliveries
        failures = self._failures.pop(sequence, 0) + 1
        self._failures[sequence] = failures
        while len(self._failures) > REMEMBERED:
            self._failures.popitem(last=False)
        return failures
