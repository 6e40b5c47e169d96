"""Applying a plan: each assignment and preemption is its own compare-and-set, then announced."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from trainyard_contracts import (
    JobRecord,
    JobState,
    WaitReason,
    lifecycle,
)
from trainyard_contracts.records import GangPlacement
from trainyard_scheduler.gpu_assignment import (
    NotEnoughDevices,
    assign_devices,
    placement_needs,
    reported_devices,
    with_gang_devices,
)
from trainyard_scheduler.jobrequests import JobRequests, StopOrder
from trainyard_scheduler.policy import (
    Assignment,
    Plan,
    Victim,
)
from trainyard_scheduler.snapshot import awaits_placement
from trainyard_scheduler.splitgang import split_placement

log = logging.getLogger("trainyard.scheduler")
ASSIGNMENTS_IN_FLIGHT = 64


def _log_failures(doing: str, job_ids: list[str], results: list[object]) -> None:
    for job_id, result in zip(job_ids, results, strict=True):
        if isinstance(result, Exception):
            log.error(
                f"{doing} a job failed; it is tried again on a later pass",
                extra={"job_id": job_id},
                exc_info=result,
            )
        elif isinstance(result, BaseException):
            raise result


class Applying(JobRequests):
    """The write half of a planning pass (``SchedulerCore.apply``)."""

    async def apply(self, decisions: Plan, now: datetime) -> Plan:
        """Make each assignment by compare-and-set; one whose job moved on meanwhile is dropped.

        ``decisions`` may be stale (a replica paused between deciding and applying): the CAS
        only moves a job that is still pending at the same attempt, so a stale plan can never
        assign an attempt that another replica has assigned since.
        """
        # each assignment is its own compare-and-set, so they can be in flight together instead
        # of one awaited round trip after another (docs/performance.md, "Kept out of the code")
        limit = asyncio.Semaphore(ASSIGNMENTS_IN_FLIGHT)

        async def assign(a: Assignment, gang: GangPlacement | None) -> None:
            async with limit:
                await self._assign(a.job_id, a.attempt, a.executor_id, now, gang)

        async def preempt(v: Victim) -> None:
            async with limit:
                await self._preempt(v, now)

        runnable: list[tuple[Assignment, GangPlacement | None]] = []
        taken: dict[str, set[int]] | None = None
        for a in decisions.assignments:
            if len(a.ranks) <= 1 or len({p.executor_id for p in a.ranks}) <= 1:
                runnable.append((a, None))
                continue
            if taken is None:
                taken = self._rendezvous_ports_taken()
            placed = split_placement(a, self.online, taken)
            if isinstance(placed, str):
                self.reasons[a.job_id] = WaitReason(kind="gang", message=placed)
                continue
            runnable.append((a, placed))
        # each job's failure is its own (logged): the others' decisions are still applied
        _log_failures(
            "preempting",
            [v.job_id for v in decisions.victims],
            await asyncio.gather(*(preempt(v) for v in decisions.victims), return_exceptions=True),
        )
        _log_failures(
            "assigning",
            [a.job_id for a, _ in runnable],
            await asyncio.gather(*(assign(a, gang) for a, gang in runnable), return_exceptions=True),
        )
        # a job just submitted that this pass did not start enters the queue now (one that did
        # start went through queued in its scheduling write)
        newcomers = [w.job_id for w in decisions.waiting if self._is_submitted(w.job_id)]
        if newcomers:

            async def enqueue(job_id: str) -> None:
                async with limit:
                    await self.queue(job_id)

            _log_failures(
                "queueing",
                newcomers,
                await asyncio.gather(*(enqueue(j) for j in newcomers), return_exceptions=True),
            )
        return decisions

    def _is_submitted(self, job_id: str) -> bool:
        record = self.view.get(job_id)
        return record is not None and record.state == JobState.SUBMITTED

    def _rendezvous_ports_taken(self) -> dict[str, set[int]]:
        """The master ports of the split gangs that are placed now, by master host."""
        taken: dict[str, set[int]] = {}
        for record in self.view.unfinished():
            gang = record.split_gang() if record.gang is not None else None
            if gang is not None and record.state.active:
                taken.setdefault(gang.master_addr, set()).add(gang.master_port)
        return taken

    async def _preempt(self, victim: Victim, now: datetime) -> None:
        """Requeue the victim's attempt, then tell its executor to stop the old one with a grace
        period (it checkpoints meanwhile); its room stays counted until the executor drops it."""
        stop = StopOrder(
            reason="preempted",
            detail=f"preempted: {victim.reason}",
            runs_it=lambda r: r.runs_on(victim.executor_id),
            cancel_reason=lambda _: f"preempted: {victim.reason}",
            grace_seconds=self.settings.preemption_grace_seconds,
        )
        # None: already requeued (a split gang is one victim per member executor)
        if await self._stop_and_requeue(victim.job_id, victim.attempt, now, stop) is not None:
            log.info(
                "preempted a running attempt",
                extra={"job_id": victim.job_id, "attempt": victim.attempt, "for_job": victim.for_job},
            )

    async def _assign(
        self,
        job_id: str,
        attempt: int,
        executor_id: str,
        now: datetime,
        gang: GangPlacement | None = None,
    ) -> None:
        if not self.may_assign():
            return  # lost the lease during this pass: the new leader plans from here

        devices = reported_devices(self.online)
        chosen: dict[str, tuple[int, ...]] = {}

        not_admitted = False

        def to_scheduled(r: JobRecord) -> JobRecord | None:
            nonlocal chosen, not_admitted
            if not (awaits_placement(r) and r.attempt == attempt):
                return None
            if not self.admission.admits(r):  # the record written, not the one planned from
                not_admitted = True
                return None
            try:  # which GPUs, by index, on each executor of the placement
                chosen = assign_devices(placement_needs(r, executor_id, gang), devices, self.held_gpus)
            except NotEnoughDevices as e:
                log.warning("not placed: %s", e, extra={"job_id": job_id})
                return None
            if r.state == JobState.SUBMITTED:  # queued and scheduled in one write; both are announced
                r = lifecycle.advance(r, JobState.QUEUED, now)
            after = lifecycle.schedule(r, executor_id, now, chosen.get(executor_id, ()))
            # one compare-and-set places every member of a split gang (and drops an older placement)
            placed = with_gang_devices(gang, chosen)
            return after if gang is None and r.gang is None else after.model_copy(update={"gang": placed})

        result = await self.store.update(job_id, to_scheduled)
        if not_admitted:
            await self.refuse_unadmitted([job_id])
            return
        if result is None:
            return  # someone else moved it first (cancel, another scheduler): nothing to do
        for eid, indices in chosen.items():
            self.held_gpus.setdefault(eid, set()).update(indices)
        before, record = result
        await self._announce_scheduled(record, queued=before.state == JobState.SUBMITTED)
