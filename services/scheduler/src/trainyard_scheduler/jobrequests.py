"""What a job asks of the scheduler by its record or an event: to be queued, to be cancelled."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from trainyard_contracts import (
    CancelAttempt,
    JobCancelled,
    JobRecord,
    JobRequeued,
    JobState,
    lifecycle,
)
from trainyard_contracts.events import CANCEL_REQUESTED_REASON
from trainyard_scheduler.admission import NOT_ADMITTED
from trainyard_scheduler.announcing import Announcing

admission_log = logging.getLogger("trainyard.scheduler.admission")


class JobRequests(Announcing):
    """Queue a submitted job; cancel a pending one, or tell an active one's executors to stop it."""

    async def queue(self, job_id: str) -> None:
        """submitted -> queued (idempotent: a redelivery re-emits the same event, deduplicated)."""
        now = self.clock()
        seen: list[JobRecord] = []

        not_admitted = False

        def to_queued(r: JobRecord) -> JobRecord | None:
            nonlocal not_admitted
            seen.append(r)
            if r.state != JobState.SUBMITTED:
                return None
            if not self.admission.admits(r):
                not_admitted = True
                return None
            return lifecycle.advance(r, JobState.QUEUED, now)

        result = await self.store.update(job_id, to_queued)
        if not_admitted:
            await self.refuse_unadmitted([job_id])
            return
        # not the view: with several replicas another one may have queued it a moment ago and
        # our view may not show that yet, so trust the record the compare-and-set just read
        record = result[1] if result else (seen[-1] if seen else None)
        if record is not None and (result or record.state == JobState.QUEUED):
            await self._publish(job_id, await self._queued_events(record))

    async def cancel(self, job_id: str, by: str | None = None, reason: str | None = None) -> None:
        """A pending job is cancelled here; an active one gets a cancel command to its executor.
        ``reason``: what the job's end says, when the request gave one of its own (a sweep's
        pruner: ``pruned``); otherwise "cancelled before it ran" / "cancelled by request"."""
        now = self.clock()
        reason = None if reason == CANCEL_REQUESTED_REASON else reason

        def cancel_pending(r: JobRecord) -> JobRecord | None:
            if r.state in (JobState.SUBMITTED, JobState.QUEUED, JobState.REQUEUED):
                return lifecycle.finish(
                    r, JobState.CANCELLED, now, exit_code=None, reason=reason or "cancelled before it ran"
                )
            return None

        result = await self.store.update(job_id, cancel_pending)
        if result is not None:
            _, after = result
            cancelled = JobCancelled(job_id=job_id, attempt=after.attempt, reason=after.reason or "", by=by)
            await self._publish(job_id, [self.events.outgoing(cancelled)])
            return
        found = await self.store.get(job_id)
        if found is None:
            return
        record, _ = found
        if record.state == JobState.CANCELLED:
            cancelled = JobCancelled(job_id=job_id, attempt=record.attempt, reason=record.reason or "", by=by)
            await self._publish(job_id, [self.events.outgoing(cancelled)])
        elif record.state.active and record.executor_id:
            commands = [  # every member of a split gang
                self.commands.outgoing(
                    CancelAttempt(
                        job_id=job_id,
                        attempt=record.attempt,
                        executor_id=executor_id,
                        reason=reason or CANCEL_REQUESTED_REASON,
                    )
                )
                for executor_id in record.executors()
            ]
            await self._publish(job_id, commands)

    async def refuse_unadmitted(self, job_ids: list[str]) -> None:
        """Cancel each waiting job whose record the submission service did not admit (its
        signature is missing or does not match: written or changed outside the submission service)."""
        now = self.clock()
        for job_id in job_ids:

            def cancel_it(r: JobRecord) -> JobRecord | None:
                if not (r.state.pending or r.state == JobState.SUBMITTED) or self.admission.admits(r):
                    return None
                return lifecycle.finish(r, JobState.CANCELLED, now, exit_code=None, reason=NOT_ADMITTED)

            result = await self.store.update(job_id, cancel_it)
            if result is None:
                continue
            before, after = result
            # an audit line: who it claims to be from, which queue; never its spec
            admission_log.error(
                "a job record the submission service did not admit was cancelled",
                extra={
                    "job_id": job_id,
                    "queue": before.spec.queue,
                    "priority": before.spec.priority,
                    "claimed_submitted_by": before.submitted_by,
                    "signed": before.admission is not None,
                },
            )
            cancelled = JobCancelled(
                job_id=job_id, attempt=after.attempt, reason=NOT_ADMITTED, by="scheduler"
            )
            await self._publish(job_id, [self.events.outgoing(cancelled)])

    async def _stop_and_requeue(
        self,
        job_id: str,
        attempt: int,
        now: datetime,
        stop: StopOrder,
    ) -> JobRecord | None:
        """Requeue a running attempt (a new attempt, not a retry) whose process may still run: it
        is marked stopping, so its room stays held until its executor says it ended; then its
        requeued event and a cancel to each of its executors. The record before, or None if the
        attempt moved on (or the lease is gone)."""
        if not self.may_assign():
            return None
        result = await self.store.update(
            job_id,
            lambda r: (
                lifecycle.requeue(
                    r, now, reason=stop.reason, counts_as_retry=False, detail=stop.detail, stopping=True
                )
                if r.state.active and r.attempt == attempt and stop.runs_it(r)
                else None
            ),
        )
        if result is None:
            return None
        before, after = result
        requeued = JobRequeued(
            job_id=job_id,
            attempt=attempt,
            reason=stop.reason,
            next_attempt=after.attempt,
            detail=after.reason,
        )
        cancels = [
            self.commands.outgoing(
                CancelAttempt(
                    job_id=job_id,
                    attempt=attempt,
                    executor_id=executor_id,
                    reason=stop.cancel_reason(executor_id),
                    grace_seconds=stop.grace_seconds,
                )
            )
            for executor_id in before.executors() or stop.fallback_executors
        ]
        await self._publish(job_id, [self.events.outgoing(requeued), *cancels])
        return before


@dataclass(frozen=True)
class StopOrder:
    """Why and how a running attempt is stopped and requeued by the scheduler."""

    reason: Literal["executor_lost", "preempted"]
    detail: str
    runs_it: Callable[[JobRecord], bool]  # the record's attempt still runs where we think it does
    cancel_reason: Callable[[str], str]  # executor id -> what its cancel command says
    grace_seconds: float
    fallback_executors: tuple[str, ...] = ()  # cancelled when the record names none
