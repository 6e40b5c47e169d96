"""Executors report; the scheduler writes the record (docs/security.md).

``apply_report`` is the pure rule: what a report of one attempt does to the job record, fenced as
the executor's own compare-and-set was (the record must name that executor and that attempt), or
``None`` when it changes nothing (a stale executor's report, or one applied already).
``ReportApplier`` is the scheduler's half: the compare-and-set, then the event the change owes
(the one the executor published when it wrote the record itself), under the same message id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats.errors

from trainyard_contracts import (
    Envelope,
    JobCancelled,
    JobRecord,
    JobRequeued,
    JobRunning,
    JobState,
    lifecycle,
)
from trainyard_contracts.reports import ExecutorReport
from trainyard_shared.attemptrecord import (
    AttemptEnd,
    conclude,
    conclude_member,
    event_for,
    leave_member,
    member_of,
    owns,
    start_member,
)
from trainyard_shared.jobstore import JobStore
from trainyard_shared.publishing import EventPublisher

log = logging.getLogger("trainyard.reports")
Notify = Callable[[ExecutorReport, tuple[JobRecord, int] | None], Awaitable[object]]
"""Tells the reporting executor that its report was applied, with the record and revision this
store knows after it (the scheduler: a core NATS publish, appliedword.py)."""

CANCELLED_BEFORE_IT_RAN = "cancelled before it ran"
# what a publish raises while NATS or a stream does not answer
PUBLISH_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, TimeoutError, ConnectionError)


def apply_report(record: JobRecord, report: ExecutorReport) -> JobRecord | None:
    """The record after ``report``, or None when it changes nothing."""
    me, attempt, now = report.executor_id, report.attempt, report.time
    if not owns(record, me, attempt):
        if report.kind in ("end", "handback", "stopped"):
            # no longer its attempt (preempted, executor lost): its process has ended there, so
            # the room the scheduler held for it is free (scheduler/room.py)
            return lifecycle.stopped(record, attempt, me)
        return None
    member = member_of(record, me, attempt) if record.gang is not None else None
    match report.kind:
        case "start":  # the rule of the executor's own start write, unchanged
            if report.adopted:  # found running after a restart: it ran, whatever was asked since
                return lifecycle.start(record, now) if record.state == JobState.SCHEDULED else None
            if member is None and record.state != JobState.SCHEDULED:
                return None  # started already: a report applied twice
            if member is not None and (member.started_at is not None or member.state is not None):
                return None
            if record.cancel_requested:
                return lifecycle.finish(
                    record, JobState.CANCELLED, now, exit_code=None, reason=CANCELLED_BEFORE_IT_RAN
                )
            return lifecycle.start(record, now) if member is None else start_member(record, me, now)
        case "end":
            if member is not None and member.state is not None:
                return None  # this member's end is recorded already
            # a member of a split gang: its ranks' end, and the attempt's end as the rules say
            end = AttemptEnd.reported(report)
            if member is not None:
                ended = conclude_member(record, me, end, now)
            else:
                ended = conclude(record, end, now)
            if report.runtime is not None:
                ended = lifecycle.ran_in(ended, report.attempt, report.runtime)
            return ended if report.usage is None else lifecycle.used(ended, report.attempt, report.usage)
        case "handback":
            given_back = leave_member(record, me, now, report.reason) if member is not None else record
            return lifecycle.requeue(
                given_back, now, reason="executor_lost", counts_as_retry=False, detail=report.reason
            )
        case "cancelled":
            if record.state != JobState.SCHEDULED:
                return None
            return lifecycle.finish(record, JobState.CANCELLED, now, exit_code=None, reason=report.reason)
    return None  # "stopped" of an attempt that is still its own: nothing to clear


def events_of(before: JobRecord, after: JobRecord, report: ExecutorReport) -> list[Envelope]:
    """The event a report's change owes: what the executor announced when it wrote it itself."""
    if before.state == after.state:
        return []  # a member of a split gang started or ended its ranks; a stopping mark cleared
    job_id, attempt, me = report.job_id, report.attempt, report.executor_id
    if after.state == JobState.CANCELLED:
        return [JobCancelled(job_id=job_id, attempt=attempt, reason=after.reason or "")]
    if report.kind == "start":
        return [JobRunning(job_id=job_id, attempt=attempt, executor_id=me, workdir=report.workdir)]
    if report.kind == "handback":
        return [
            JobRequeued(
                job_id=job_id,
                attempt=attempt,
                reason="executor_lost",
                next_attempt=after.attempt,
                detail=report.reason,
            )
        ]
    event = event_for(before, after, report.duration_seconds)
    if before.gang is not None and after.state != JobState.SUCCEEDED and hasattr(event, "executor_id"):
        event = event.model_copy(update={"executor_id": me})  # the member that ended it
    return [event]


def owed_after_applied(record: JobRecord, report: ExecutorReport) -> list[Envelope]:
    """The event of a report this record shows applied already, rebuilt from the record: what a
    redelivered report (the scheduler died, or its publish failed, between the compare-and-set and
    the event) still owes. Empty when the record does not show it (a stale report)."""
    attempt, me = report.attempt, report.executor_id
    info = next((i for i in record.attempts if i.number == attempt), None)
    if info is None or (info.executor_id != me and not record.runs_on(me)):
        return []
    if report.kind == "start" and info.started_at == report.time and record.attempt >= attempt:
        # this report started the attempt (its time is the attempt's start), whatever came since
        return [JobRunning(job_id=record.job_id, attempt=attempt, executor_id=me, workdir=report.workdir)]
    if record.attempt == attempt:
        if record.state == JobState.CANCELLED and report.kind in ("start", "cancelled"):
            return [JobCancelled(job_id=record.job_id, attempt=attempt, reason=record.reason or "")]
        if report.kind == "end" and record.state.terminal and info.ended_at == report.time:
            return events_of(record.model_copy(update={"state": JobState.RUNNING}), record, report)
        return []
    why = "executor_lost" if report.kind == "handback" else "retry"
    requeued_by_it = (  # the attempt's history entry is the one this report wrote, to the instant
        record.attempt == attempt + 1
        and report.kind in ("end", "handback")
        and info.state == JobState.REQUEUED
        and info.ended_at == report.time
        and info.exit_code == report.exit_code
        and info.reason == (report.reason or why)
    )
    if not requeued_by_it:
        return []
    return [
        JobRequeued(
            job_id=record.job_id,
            attempt=attempt,
            reason=why,
            next_attempt=attempt + 1,
            not_before=record.not_before if record.state == JobState.REQUEUED else None,
            detail=info.reason,
        )
    ]


class ReportApplier:
    """Applies executors' reports to the job records (compare-and-set) and announces each change.

    Safe from any scheduler replica: every application is a compare-and-set on the record's
    revision and fenced on the reporting executor and attempt, so two replicas (or a report and
    the leader's own writes) never both move the same attempt."""

    def __init__(
        self,
        store: JobStore,
        events: EventPublisher,
        outage_seconds: float = 300.0,
        notify: Notify | None = None,
    ) -> None:
        self.store = store
        self.events = events
        self.outage_seconds = outage_seconds
        self.notify = notify

    async def apply(self, report: ExecutorReport) -> JobRecord | None:
        """The record after ``report``; None when it changed nothing (logged when stale)."""
        seen: list[JobRecord] = []

        def change(record: JobRecord) -> JobRecord | None:
            seen.append(record)
            return apply_report(record, report)

        result = await self.store.update(report.job_id, change)
        # before the events: the executor waits on the record (a start runs once it is applied),
        # not on them; applied or not, the record now says what became of the report
        await self._notify(report, self.store.known(report.job_id))
        if result is None:
            owed = owed_after_applied(seen[-1], report) if seen else []
            if owed:
                await self._announce_unsaid(owed)
            elif report.kind != "stopped":
                log.warning(
                    "dropped a report of an attempt that is not that executor's",
                    extra={
                        "job_id": report.job_id,
                        "attempt": report.attempt,
                        "executor_id": report.executor_id,
                        "kind": report.kind,
                        "record_attempt": seen[-1].attempt if seen else None,
                        "record_state": seen[-1].state.value if seen else None,
                    },
                )
            return None
        before, after = result
        owed = events_of(before, after, report)
        if owed:
            await self._announce(report.job_id, owed)
        return after

    async def _notify(self, report: ExecutorReport, known: tuple[JobRecord, int] | None) -> None:
        if self.notify is None:
            return
        try:
            await self.notify(report, known)
        except Exception:  # a wake-up only: the executor reads the record again anyway
            log.debug("could not tell the executor its report is applied", exc_info=True)

    async def _announce(self, job_id: str, owed: list[Envelope]) -> None:
        """Publish a change's events, tried again while the jobs stream does not answer (a
        restart, a leader election) for up to ``outage_seconds``: the job's next report waits
        behind it (its consumer lane), so a job's events keep their order. Then it raises, the
        report is redelivered, and the record shows it applied (``owed_after_applied``)."""
        sends = [self.events.outgoing(e) for e in owed]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.outage_seconds
        pause = 0.2
        while True:
            try:
                await self.events.publish_in_order(sends)
                return
            except PUBLISH_ERRORS as exc:
                if loop.time() + pause > deadline:
                    raise
                log.warning(
                    "could not announce a reported change; trying again",
                    extra={"job_id": job_id, "error": type(exc).__name__},
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _announce_unsaid(self, owed: list[Envelope]) -> None:
        """A report the record shows applied came again (redelivered: the scheduler died, or its
        publish failed, between its write and the event; or sent again by its executor): its
        event is announced if the jobs stream does not hold it (or a later attempt's) yet, with
        the event's own message id."""
        subjects = self.events.subjects
        unsaid = []
        for event in owed:
            said = await self.events.announced_attempt(event.subject(subjects))
            if said is None or said < event.attempt:
                unsaid.append(event)
        if unsaid:
            log.warning(
                "announced a change a report made whose event was never published",
                extra={"job_id": unsaid[0].job_id, "events": [e.type for e in unsaid]},
            )
            await self._announce(unsaid[0].job_id, unsaid)
