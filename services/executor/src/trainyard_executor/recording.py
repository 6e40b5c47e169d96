"""Recording how an attempt ended: the fenced write, its event, and riding out a broker outage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from nats.errors import Error as NatsError

from trainyard_contracts import (
    Envelope,
    JobRecord,
    JobRequeued,
    JobState,
    lifecycle,
)
from trainyard_executor.gang import (
    conclude_member,
    leave_member,
    member_of,
)
from trainyard_executor.logship import LogShipper
from trainyard_executor.outcomes import conclude, event_for, owns
from trainyard_executor.settings import ExecutorSettings
from trainyard_shared.jobstore import JobStore
from trainyard_shared.publishing import EventPublisher

log = logging.getLogger("trainyard.executor")
T = TypeVar("T")
# what NATS raises while the server restarts or the network blips (nats.errors.Error covers the
# client's own timeouts, no-responders and closed-connection errors)
BROKER_ERRORS = (TimeoutError, NatsError, ConnectionError)


def ended_here(record: JobRecord, executor_id: str, attempt: int) -> bool:
    """The record shows ``attempt`` ended, on ``executor_id``, in a terminal state."""
    return bool(record.attempt == attempt and record.state.terminal and record.runs_on(executor_id))


def requeued_here(found: JobRecord, written: JobRecord, attempt: int) -> bool:
    """The record shows ``attempt`` requeued for a retry by ``written``, the very write this
    executor made: the attempt's history entry (its end time, state, exit code and reason) is the
    one that write put there, and only a requeue of the attempt moves the record past it. A requeue
    by anyone else (the scheduler: executor lost, preempted) wrote its own time and reason there."""
    if written.state != JobState.REQUEUED or written.attempt != attempt + 1 or found.attempt <= attempt:
        return False
    mine = next((info for info in written.attempts if info.number == attempt), None)
    there = next((info for info in found.attempts if info.number == attempt), None)
    return (
        mine is not None
        and there is not None
        and there.state == JobState.REQUEUED
        and there.model_dump() == mine.model_dump()
    )


class AttemptRecorder:
    """Writes an attempt's end into the job record (compare-and-set, fenced on this executor and
    the attempt) and announces it. The base of :class:`~trainyard_executor.core.ExecutorCore`."""

    me: str
    store: JobStore
    events: EventPublisher
    settings: ExecutorSettings
    clock: Callable[[], datetime]

    async def _finish(
        self,
        job_id: str,
        attempt: int,
        kind: str,
        exit_code: int | None,
        reason: str,
        outputs_uri: str | None,
        duration: float,
        lines_stored: Awaitable[object] | None = None,
    ) -> JobRecord | None:
        """Record how the attempt ended and announce it; ``lines_stored``: the attempt's last log
        lines on their way, awaited before the event (a reader of the event finds every line)."""
        now = self.clock()
        tried: list[tuple[JobRecord, JobRecord]] = []  # (before, after) of each write we attempted

        async def announce(event: Envelope) -> None:
            if lines_stored is not None:
                await lines_stored
            # the same message id on every try: the stream keeps one
            await self._while_the_broker_is_away(lambda: self.events.emit(event), job_id)

        def change(r: JobRecord) -> JobRecord | None:
            if not owns(r, self.me, attempt):
                return None
            if r.gang is not None and member_of(r, self.me, attempt) is not None:
                after = conclude_member(
                    r, self.me, kind, exit_code=exit_code, reason=reason, outputs_uri=outputs_uri, now=now
                )
            else:
                after = conclude(
                    r, kind, exit_code=exit_code, reason=reason, outputs_uri=outputs_uri, now=now
                )
            tried.append((r, after))
            return after

        result: tuple[JobRecord, JobRecord] | None = await self._while_the_broker_is_away(
            lambda: self.store.update(job_id, change), job_id
        )
        if result is None:
            # our write may have landed and only its ack been lost (NATS restarted in between):
            # the record then already shows this attempt ended here; announce it (same message id
            # as the first try, so the stream keeps one) instead of leaving it without an event
            found = await self._while_the_broker_is_away(lambda: self.store.get(job_id), job_id)
            if found is not None and ended_here(found[0], self.me, attempt):
                await announce(event_for(found[0], found[0], duration))
                return found[0]
            # the same for a retry: the landed write requeued the attempt (state requeued, attempt
            # + 1), and the requeued event it owes is the one that write would have announced
            landed = None
            if found is not None:
                landed = next((w for w in reversed(tried) if requeued_here(found[0], w[1], attempt)), None)
            if landed is None:
                log.warning(
                    "attempt ended after it was superseded; not recorded",
                    extra={"job_id": job_id, "attempt": attempt},
                )
                await self._let_go(job_id, attempt)
                return None
            result = landed
        before, after = result
        if after.state == before.state:
            return after  # a member of a split gang recorded its ranks; the others still run
        event = event_for(before, after, duration)
        if before.gang is not None and after.state != JobState.SUCCEEDED and hasattr(event, "executor_id"):
            event = event.model_copy(update={"executor_id": self.me})  # the member that ended it
        await announce(event)
        return after

    async def _let_go(self, job_id: str, attempt: int) -> None:
        """Say in the record that a stopped attempt's process has ended here (its ``stopping``
        mark cleared): the scheduler holds its room until then (scheduler/room.py)."""
        try:
            await self._while_the_broker_is_away(
                lambda: self.store.update(job_id, lambda r: lifecycle.stopped(r, attempt, self.me)), job_id
            )
        except BROKER_ERRORS:
            log.warning(
                "could not record that a stopped attempt ended; the scheduler frees its room later",
                extra={"job_id": job_id, "attempt": attempt},
            )

    async def _ship_outcome_lines(self, shipper: LogShipper, line: str, job_id: str) -> None:
        try:
            await self._while_the_broker_is_away(lambda: shipper.system(line), job_id)
            await self._while_the_broker_is_away(shipper.close, job_id)
        except BROKER_ERRORS:
            log.warning("the attempt's last log lines could not be stored", extra={"job_id": job_id})

    async def _while_the_broker_is_away(self, call: Callable[[], Awaitable[T]], job_id: str) -> T:
        """``call()``, tried again while NATS does not answer (a restart, a network blip), for up
        to ``broker_outage_seconds``: a broker outage delays recording an outcome, never changes it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.broker_outage_seconds
        pause = 0.2
        while True:
            try:
                return await call()
            except BROKER_ERRORS as exc:
                if loop.time() + pause > deadline:
                    raise
                log.warning(
                    "NATS did not answer; trying again", extra={"job_id": job_id, "error": type(exc).__name__}
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _requeue(self, record: JobRecord, detail: str) -> None:
        now = self.clock()
        attempt = record.attempt
        result = await self.store.update(
            record.job_id,
            lambda r: (
                # a member of a split gang says it gave its ranks up: the others stop theirs
                lifecycle.requeue(
                    leave_member(r, self.me, now, detail) if r.gang is not None else r,
                    now,
                    reason="executor_lost",
                    counts_as_retry=False,
                    detail=detail,
                )
                if owns(r, self.me, attempt)
                else None
            ),
        )
        if result is None:  # superseded meanwhile (preempted, executor lost): it has ended here
            await self._let_go(record.job_id, attempt)
            return
        _, after = result
        await self.events.emit(
            JobRequeued(
                job_id=record.job_id,
                attempt=attempt,
                reason="executor_lost",
                next_attempt=after.attempt,
                detail=detail,
            )
        )
