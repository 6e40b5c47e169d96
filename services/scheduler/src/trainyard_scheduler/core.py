"""The scheduler's use cases: queue what is submitted, place what is pending, cancel, recover.

Collaborators come in as arguments (store, view, publishers, executor directory, clock), so tests
run this against a real NATS without the faststream app around it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable
from datetime import datetime

from trainyard_contracts import (
    AssignmentDecision,
    CycleDecisions,
    DryRunAnswer,
    JobRecord,
    JobSpec,
    PreemptionDecision,
    WaitReason,
    WhyAnswer,
    is_job_id,
    new_job_id,
)
from trainyard_contracts.records import ExecutorHeartbeat
from trainyard_scheduler.applying import Applying
from trainyard_scheduler.explain import QueuedJob, count_by_kind, wait_reasons
from trainyard_scheduler.policy import (
    Plan,
    Snapshot,
    plan,
)
from trainyard_scheduler.recovery import Recovery
from trainyard_scheduler.snapshot import awaits_placement, observe, pending_job

log = logging.getLogger("trainyard.scheduler")
# a stopped attempt's room is held from its record at most this long past its grace period: its
# executor kills it at the end of the grace, so a "stopping" mark left behind (a failed write, an
# executor of an older version) does not hold room for good
STOPPING_HOLD_SLACK_SECONDS = 30.0


class SchedulerCore(Applying, Recovery):
    """The use cases: a pass's snapshot and decisions and the leader's answers here; a job's
    requests in jobrequests.py, writing decisions in applying.py, announcing them in announcing.py,
    recovery in recovery.py."""

    # -- planning -----------------------------------------------------------------------------

    async def snapshot(self, now: datetime) -> Snapshot:
        """What the policy decides on (snapshot.py), from the view and the executors' heartbeats;
        remembers who is online and the GPUs they hold for this pass's assignments."""
        online = await self.executors.online(now)
        self.online = online
        finished = await self._finished_still_held(online)
        observed = observe(
            self._admitted(self.view.unfinished()),
            online,
            now,
            lookup=lambda job_id: self.view.get(job_id) or finished.get(job_id),
            stopping_hold_seconds=self.settings.preemption_grace_seconds + STOPPING_HOLD_SLACK_SECONDS,
            queues=self.queue_configs(),
        )
        self.held_gpus = observed.held_gpus
        return observed.snapshot

    def _admitted(self, records: Iterable[JobRecord]) -> list[JobRecord]:
        """``records`` without the waiting ones the submission service did not admit (they are
        cancelled after the pass: ``refuse_unadmitted``)."""
        if not self.admission.enforced:
            return list(records)
        kept, refused, waiting = [], set(), []
        for record in records:
            if awaits_placement(record):
                waiting.append(record.job_id)
                if not self.admission.admits(record, self.view.revisions.get(record.job_id)):
                    refused.add(record.job_id)
                    continue
            kept.append(record)
        self.admission.keep_only(waiting)
        self.unadmitted = refused
        return kept

    async def _finished_still_held(self, online: dict[str, ExecutorHeartbeat]) -> dict[str, JobRecord]:
        """Records of jobs finished long enough ago to be out of the view's memory (or before
        this process started: its start reads the live jobs only) that an executor still reports
        (a slow clean-up): their room counts until the executor lets go."""
        found: dict[str, JobRecord] = {}
        for beat in online.values():
            for ref in beat.running:
                job_id = ref.job_id
                if job_id in found or self.view.get(job_id) is not None:
                    continue
                read = await self.store.get(job_id)
                if read is not None:
                    found[job_id] = read[0]
        return found

    async def catch_up(self, timeout: float) -> bool:
        """Wait until the view holds every write made to the jobs bucket so far (bounded).

        A replica that has just become leader plans from its view; writes the previous leader
        made just before it stopped may still be on their way through the watch, and planning
        without them would count capacity as free that is already taken.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        status = await self.view.kv.status()
        target = status.stream_info.state.last_seq
        while self.view.newest_revision < target:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def plan_pass(self) -> Plan:
        """One planning pass: decide from a snapshot, then apply the decisions."""
        now = self.clock()
        if not self.may_assign():
            return Plan((), ())
        decisions = await self.apply(await self.decide(now), now)
        if self.unadmitted:
            await self.refuse_unadmitted(sorted(self.unadmitted))
        return decisions

    async def decide(self, now: datetime) -> Plan:
        decisions = plan(await self.snapshot(now), now.timestamp())
        self.waiting = {w.job_id: w.reason for w in decisions.waiting}
        # positions in queue matter only for what waits (most passes, under load: nothing)
        self.reasons = wait_reasons(decisions.waiting, self._queued()) if decisions.waiting else {}
        self.decided_at = now
        return decisions

    def _queued(self) -> list[QueuedJob]:
        return [
            QueuedJob(r.job_id, r.spec.queue, r.spec.priority, r.submitted_at.timestamp())
            for r in self.view.unfinished()
            if awaits_placement(r)
        ]

    def _queue_of(self, job_id: str) -> str:
        record = self.view.get(job_id)
        return record.spec.queue if record is not None else "default"

    async def why(self, job_id: str, leader: str | None = None) -> WhyAnswer:
        """Why ``job_id`` is where it is, from the last planning pass (the leader's answer). A job
        the view does not hold (finished long ago, or written a moment ago) is read from the bucket."""
        record = self.view.get(job_id)
        if record is None:
            # only a well-formed id is looked up: anything else is no key the bucket could hold
            found = await self.store.get(job_id) if is_job_id(job_id) else None
            if found is None:
                return WhyAnswer(job_id=job_id, found=False, leader=leader)
            record = found[0]
        pending = record.state.pending
        reason = self.reasons.get(job_id) if pending else None
        if pending and reason is None:
            reason = WaitReason(kind="other", message="not planned yet: it is placed on the next pass")
        elif not pending:
            where = f" on {record.executor_id}" if record.executor_id else ""
            reason = WaitReason(kind="other", message=f"not pending: {record.state.value}{where}")
        return WhyAnswer(
            job_id=job_id,
            state=record.state.value,
            pending=pending,
            reason=reason,
            decided_at=self.decided_at,
            leader=leader,
        )

    async def dry_run(self, spec: JobSpec, leader: str | None = None) -> DryRunAnswer:
        """What the policy would decide now if ``spec`` were submitted; nothing is queued."""
        now = self.clock()
        snapshot = await self.snapshot(now)
        probe_id = "dry-run-" + new_job_id()
        probe = pending_job(probe_id, spec, now.timestamp())
        decisions = plan(dataclasses.replace(snapshot, pending=(*snapshot.pending, probe)), now.timestamp())
        executors = sorted(
            {p.executor_id for a in decisions.assignments if a.job_id == probe_id for p in a.ranks}
            | {a.executor_id for a in decisions.assignments if a.job_id == probe_id}
        )
        if executors:
            return DryRunAnswer(would_start=True, executors=executors, leader=leader, decided_at=now)
        queued = [*self._queued(), QueuedJob(probe_id, spec.queue, spec.priority, now.timestamp())]
        reason = wait_reasons([w for w in decisions.waiting if w.job_id == probe_id], queued).get(probe_id)
        return DryRunAnswer(would_start=False, reason=reason, leader=leader, decided_at=now)

    def cycle_decisions(
        self: SchedulerCore, decisions: Plan, *, cycle: int, replica: str, term: int, seconds: float
    ) -> CycleDecisions:
        queue_of = self._queue_of  # the assigned jobs only: a pass costs its decisions, not the backlog
        return CycleDecisions(
            cycle=cycle,
            replica=replica,
            term=term,
            duration_ms=round(seconds * 1000, 3),
            pending=len(decisions.waiting) + len(decisions.assignments),
            assignments=[
                AssignmentDecision(
                    job_id=a.job_id,
                    attempt=a.attempt,
                    executors=[a.executor_id]
                    + [p.executor_id for p in a.ranks if p.executor_id != a.executor_id],
                    queue=queue_of(a.job_id),
                )
                for a in decisions.assignments
            ],
            preemptions=[
                PreemptionDecision(
                    job_id=v.job_id, attempt=v.attempt, executor_id=v.executor_id, reason=v.reason
                )
                for v in decisions.victims
            ],
            waiting_by_kind=count_by_kind(self.reasons),
        )
