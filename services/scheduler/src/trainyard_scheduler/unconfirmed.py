"""Announcements the scheduler owes: the events and commands of a state change it has written by
compare-and-set but could not publish (NATS away for a moment, a stream electing a leader).

The write stands, so what it announces must follow: a job left ``scheduled`` without its start
command would otherwise wait for the reconciler's re-send (``start_resend_seconds``, 20 s by
default). Each owed batch is published again, whole and in order, under the same message ids (the
streams drop what they already hold), with a growing delay, until it is confirmed. Past
``give_up_after`` (well inside the streams' 120 s duplicate window, beyond which a late copy would
no longer be dropped) it is given up and logged; the reconciler still re-sends the start command of
a job that stays scheduled. Bounded: at most ``limit`` batches are owed, the oldest dropped first.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import nats.errors

from trainyard_shared.publishing import MSG_ID, Outgoing

log = logging.getLogger("trainyard.scheduler")

# what a publish raises while NATS or a stream does not answer (nats.js.errors.Error, no stream
# response, derives from nats.errors.Error; the client's own timeout from TimeoutError too)
PUBLISH_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, TimeoutError, ConnectionError)

Publish = Callable[[Sequence[Outgoing]], Awaitable[object]]


@dataclass(slots=True)
class Owed:
    job_id: str
    publishes: tuple[Outgoing, ...]
    since: float
    next_try: float
    delay: float


class Unconfirmed:
    def __init__(
        self,
        *,
        first_delay: float = 0.2,
        max_delay: float = 5.0,
        give_up_after: float = 60.0,
        limit: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.give_up_after = give_up_after
        self.limit = limit
        self.clock = clock
        self._owed: OrderedDict[tuple[str, ...], Owed] = OrderedDict()

    def __len__(self) -> int:
        return len(self._owed)

    def owe(self, job_id: str, publishes: Sequence[Outgoing]) -> None:
        """Remember a batch whose publish failed; the same batch owed again keeps its first time."""
        key = tuple(p.headers.get(MSG_ID, p.subject) for p in publishes)
        now = self.clock()
        known = self._owed.get(key)
        if known is not None:
            known.next_try = now + known.delay
            return
        self._owed[key] = Owed(job_id, tuple(publishes), now, now + self.first_delay, self.first_delay)
        while len(self._owed) > self.limit:
            _, dropped = self._owed.popitem(last=False)
            log.error(
                "too many unconfirmed announcements: gave up the oldest",
                extra={"job_id": dropped.job_id, "limit": self.limit},
            )

    def next_due(self) -> float | None:
        """Seconds until the next retry is due (0 when one is due now), None when nothing is owed."""
        if not self._owed:
            return None
        return max(0.0, min(o.next_try for o in self._owed.values()) - self.clock())

    async def retry(self, publish: Publish) -> int:
        """Publish every batch that is due again; returns how many were confirmed."""
        confirmed = 0
        for key, owed in list(self._owed.items()):
            now = self.clock()
            if owed.next_try > now:
                continue
            try:
                await publish(owed.publishes)
            except PUBLISH_ERRORS as exc:
                if now - owed.since >= self.give_up_after:
                    self._owed.pop(key, None)
                    log.error(
                        "gave up announcing a job's change; the reconciler re-sends a start that stays due",
                        extra={"job_id": owed.job_id, "error": type(exc).__name__},
                    )
                    continue
                owed.delay = min(owed.delay * 2, self.max_delay)
                owed.next_try = self.clock() + owed.delay
                continue
            self._owed.pop(key, None)
            confirmed += 1
            log.info("announced a job's change after a failed publish", extra={"job_id": owed.job_id})
        return confirmed
