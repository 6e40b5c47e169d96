"""Recovery: close the gaps a crash can leave, and requeue the attempts of lost executors."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from trainyard_contracts import (
    JobRecord,
    JobState,
)
from trainyard_contracts.records import ExecutorHeartbeat
from trainyard_scheduler.jobrequests import JobRequests, StopOrder

log = logging.getLogger("trainyard.scheduler")


class Recovery(JobRequests):
    """``SchedulerCore.reconcile`` and what it needs."""

    async def reconcile(self, *, resend_scheduled: bool = False) -> None:
        """Close the gaps a crash can leave, and requeue the attempts of lost executors.

        ``resend_scheduled`` (a new leader's first pass): re-send the start command of every
        scheduled attempt at once, not only of those stuck for ``start_resend_seconds``: the
        previous leader may have died between its compare-and-set and the command. A duplicate
        is harmless: the exec stream drops the same message id, and the executor starts an
        attempt only by compare-and-set from scheduled to running.
        """
        if not self.may_assign():
            return
        now = self.clock()
        online = await self.executors.online(now)
        if resend_scheduled:  # a new leader: the grace of an absent executor starts now
            self.absent_since.clear()
        for executor_id in [e for e in self.absent_since if e in online]:
            log.info(
                "an absent executor is back; its attempts stay with it", extra={"executor_id": executor_id}
            )
            del self.absent_since[executor_id]
        confirmed_online: dict[str, ExecutorHeartbeat] | None = None
        for record in self.view.unfinished():
            try:
                confirmed_online = await self._reconcile_one(
                    record, now, online, confirmed_online, resend_scheduled
                )
            except Exception:
                # one record's failure is its own: the others are still reconciled
                log.exception(
                    "reconciling a job failed; going on with the others", extra={"job_id": record.job_id}
                )

    async def _reconcile_one(
        self,
        record: JobRecord,
        now: datetime,
        online: dict[str, ExecutorHeartbeat],
        confirmed_online: dict[str, ExecutorHeartbeat] | None,
        resend_scheduled: bool,
    ) -> dict[str, ExecutorHeartbeat] | None:
        """Reconcile one record; returns the bucket's own read of the executors if it made one."""
        age = (now - record.updated_at).total_seconds()
        if record.state == JobState.SUBMITTED and age > self.settings.submitted_grace_seconds:
            await self.queue(record.job_id)
        elif record.state.pending and record.cancel_requested:
            await self.cancel(record.job_id)
        elif record.state.active and (lost := self._lost_executor(record, online))[0]:
            # the directory may follow a watch: the bucket itself confirms a loss first
            if confirmed_online is None:
                confirmed_online = await self.executors.online(now, fresh=True)
            if (lost := self._lost_executor(record, confirmed_online))[0] and self._known_dead(lost[1]):
                await self._requeue_lost(record, now, lost[1])
        elif record.state == JobState.SCHEDULED and (
            resend_scheduled or age > self.settings.start_resend_seconds
        ):
            # the start command may never have been published (crash after the CAS): the
            # exec stream deduplicates on the same message id if it was
            await self._announce_scheduled(record)
        elif (
            record.state == JobState.RUNNING
            and record.gang is not None
            and (resend_scheduled or age > self.settings.start_resend_seconds)
            and (gang := record.split_gang()) is not None
            and any(m.started_at is None and m.state is None for m in gang.members)
        ):
            # a split gang runs, but a member never started (a crash between its start
            # commands): the ranks that run wait for it at the rendezvous
            await self._announce_scheduled(record)
        return confirmed_online

    def _known_dead(self, executor_id: str | None) -> bool:
        """An executor without a lease is known dead once it has stayed away ``lost_grace_seconds``
        since this leader first saw it so. Until then it may be restarting: it beats before its
        recovery, which adopts or ends its own attempts (docs/scheduling.md, "Known dead")."""
        if executor_id is None:
            return True
        loop_time = asyncio.get_running_loop().time()
        since = self.absent_since.get(executor_id)
        if since is None:
            self.absent_since[executor_id] = since = loop_time
            log.warning(
                "an executor has no lease; its attempts are requeued if it stays away",
                extra={"executor_id": executor_id, "grace_seconds": self.settings.lost_grace_seconds},
            )
        return loop_time - since >= self.settings.lost_grace_seconds

    @staticmethod
    def _lost_executor(record: JobRecord, online: dict[str, ExecutorHeartbeat]) -> tuple[bool, str | None]:
        """(True, which) when an executor of the active attempt has no lease any more: its own, or
        any member of a split gang whose ranks have not ended."""
        gang = record.split_gang() if record.gang is not None else None
        if gang is None:
            return (record.executor_id not in online, record.executor_id)
        for member in gang.members:
            if member.state is None and member.executor_id not in online:
                return (True, member.executor_id)
        return (False, None)

    async def _requeue_lost(self, record: JobRecord, now: datetime, lost: str | None) -> None:
        # the lost one must not keep running the old attempt if it comes back; the other members
        # of a split gang stop their ranks now (they could not finish without the lost ones)
        stop = StopOrder(
            reason="executor_lost",
            detail=f"executor {lost} stopped sending heartbeats",
            runs_it=lambda r: r.executor_id == lost or r.runs_on(str(lost)),
            cancel_reason=lambda executor_id: (
                "attempt superseded after executor loss"
                if executor_id == lost
                else f"the gang lost executor {lost}"
            ),
            grace_seconds=0,
            fallback_executors=(lost,) if lost else (),
        )
        if await self._stop_and_requeue(record.job_id, record.attempt, now, stop) is not None:
            log.warning(
                "requeued the attempt of a lost executor",
                extra={"job_id": record.job_id, "attempt": record.attempt, "executor_id": lost},
            )
