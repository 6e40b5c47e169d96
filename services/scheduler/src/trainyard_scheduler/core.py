"""The scheduler's use cases: queue what is submitted, place what is pending, cancel, recover.

Collaborators come in as arguments (store, view, publishers, executor directory, clock), so tests
run this against a real NATS without the faststream app around it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import zlib
from collections.abc import Callable
from datetime import datetime

from nats.js.errors import NotFoundError

from trainyard_contracts import (
    AssignmentDecision,
    CancelAttempt,
    Capacity,
    CycleDecisions,
    DryRunAnswer,
    JobCancelled,
    JobFailed,
    JobQueued,
    JobRecord,
    JobRequeued,
    JobScheduled,
    JobSpec,
    JobState,
    JobSubmitted,
    PreemptionDecision,
    QueueConfig,
    WaitReason,
    WhyAnswer,
    is_job_id,
    lifecycle,
    new_job_id,
)
from trainyard_contracts._time import utcnow
from trainyard_contracts.commands import Rendezvous
from trainyard_contracts.records import ExecutorHeartbeat, GangMember, GangPlacement, PortRange
from trainyard_scheduler.explain import QueuedJob, count_by_kind, wait_reasons
from trainyard_scheduler.gpu_assignment import (
    NotEnoughDevices,
    assign_devices,
    placement_needs,
    reported_devices,
    with_gang_devices,
)
from trainyard_scheduler.placement import (
    Assignment,
    Demand,
    ExecutorFree,
    PendingJob,
    Plan,
    RunningJob,
    Snapshot,
    Victim,
    plan,
)
from trainyard_scheduler.room import attempt_ended, stopping_attempts
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_scheduler.startcommand import start_command, unsendable_reason
from trainyard_scheduler.unconfirmed import PUBLISH_ERRORS, Unconfirmed
from trainyard_shared.commands import CommandSender
from trainyard_shared.events import EventPublisher, Outgoing, publish_in_order
from trainyard_shared.executors import ExecutorDirectory
from trainyard_shared.jobstore import JobStore
from trainyard_shared.jobview import JobView
from trainyard_shared.tracing import job_trace

log = logging.getLogger("trainyard.scheduler")
ASSIGNMENTS_IN_FLIGHT = 64
# well inside the jobs stream's duplicate window (120 s): a younger submitted-event copy is
# dropped by the stream if the submission service's one is there already
SUBMITTED_COPY_UNCHECKED_SECONDS = 60.0
# a stopped attempt's room is held from its record at most this long past its grace period: its
# executor kills it at the end of the grace, so a "stopping" mark left behind (a failed write, an
# executor of an older version) does not hold room for good
STOPPING_HOLD_SLACK_SECONDS = 30.0
# a message's headers count against the server's max_payload too (nats-py checks the body only)
HEADERS_ROOM = 4096


def awaits_placement(record: JobRecord) -> bool:
    """Pending for the planner: queued or requeued, or just submitted (the pass that first sees a
    submitted job queues it, or queues and schedules it in one write)."""
    return (record.state.pending or record.state == JobState.SUBMITTED) and not record.cancel_requested


def demand_of(record: JobRecord) -> Demand:
    r = record.spec.resources
    return Demand(cpu=r.cpu, memory=r.memory, gpu=r.gpu)


def rendezvous_port(job_id: str, attempt: int, ports: PortRange, taken: set[int]) -> int | None:
    """A split gang's MASTER_PORT: from a hash of job and attempt into the master executor's range,
    the next one up (wrapping) when another split gang on the same host has it. Deterministic, so
    two replicas deciding the same placement pick the same port; it is kept in the record."""
    span = ports.last - ports.first + 1
    start = zlib.crc32(f"{job_id}:{attempt}".encode()) % span
    for step in range(span):
        port = ports.first + (start + step) % span
        if port not in taken:
            return port
    return None


def split_placement(
    assignment: Assignment, online: dict[str, ExecutorHeartbeat], taken: dict[str, set[int]]
) -> GangPlacement | str:
    """The placement of a gang the policy split across executors, or why it cannot run split."""
    members = [p for p in assignment.ranks if p.ranks]
    master = next((p for p in members if 0 in p.ranks), None)
    if master is None:
        return "the gang's placement has no rank 0"
    for p in members:
        beat = online.get(p.executor_id)
        if beat is None:
            return f"executor {p.executor_id} is gone"
        if beat.backend == "kubernetes":
            # a Kubernetes executor runs a gang as one Indexed Job: all ranks or none
            return (
                f"the gang needs {assignment.world_size} ranks on one executor; {p.executor_id} runs "
                "gangs whole (kubernetes)"
            )
    beat = online[master.executor_id]
    if beat.advertise_host is None or beat.rendezvous_ports is None:
        return f"executor {master.executor_id} advertises no rendezvous address (an older version)"
    used = taken.setdefault(beat.advertise_host, set())
    port = rendezvous_port(assignment.job_id, assignment.attempt, beat.rendezvous_ports, used)
    if port is None:
        return f"every rendezvous port of {master.executor_id} is taken"
    used.add(port)
    ordered = [master, *(p for p in members if p is not master)]
    return GangPlacement(
        attempt=assignment.attempt,
        master_addr=beat.advertise_host,
        master_port=port,
        members=[GangMember(executor_id=p.executor_id, ranks=sorted(p.ranks)) for p in ordered],
    )


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


class SchedulerCore:
    def __init__(
        self,
        store: JobStore,
        view: JobView,
        events: EventPublisher,
        commands: CommandSender,
        executors: ExecutorDirectory,
        settings: SchedulerSettings,
        clock: Callable[[], datetime] = utcnow,
        may_assign: Callable[[], bool] = lambda: True,
        queue_configs: Callable[[], tuple[QueueConfig, ...]] = tuple,
    ) -> None:
        self.queue_configs = queue_configs
        self.store = store
        self.view = view
        self.events = events
        self.commands = commands
        self.executors = executors
        self.settings = settings
        self.clock = clock
        # leadership: asked before every assignment or requeue, so a replica that lost (or never
        # had) the lease stops acting at once. Safety does not depend on it: each decision is a
        # compare-and-set on the job record, so two replicas cannot both make the same one.
        self.may_assign = may_assign
        self.waiting: dict[str, str] = {}
        self.reasons: dict[str, WaitReason] = {}  # from the last pass: what `why` answers
        self.decided_at: datetime | None = None
        self.online: dict[str, ExecutorHeartbeat] = {}  # from the last snapshot
        # executor -> GPU indices live attempts hold there: from the last snapshot, plus what this
        # pass assigned since
        self.held_gpus: dict[str, set[int]] = {}
        # what a written change still owes its followers (unconfirmed.py): retried with backoff
        self.unconfirmed = Unconfirmed()
        # executor id -> when (monotonic) this leader first saw it without a lease while an attempt
        # was on it: its attempts are requeued only once it has stayed away lost_grace_seconds
        self.absent_since: dict[str, float] = {}

    async def _publish(self, job_id: str, sends: list[Outgoing]) -> bool:
        """Publish one change's events and commands in order. A failure is the job's own: the
        batch is owed and retried promptly (``retry_unconfirmed``), the caller goes on."""
        try:
            await publish_in_order(self.events.broker, sends)
        except PUBLISH_ERRORS as exc:
            log.warning(
                "could not announce a job's change; retrying with backoff",
                extra={"job_id": job_id, "error": type(exc).__name__},
            )
            self.unconfirmed.owe(job_id, sends)
            return False
        return True

    async def retry_unconfirmed(self) -> int:
        """Publish again what earlier changes still owe (due ones only); how many were confirmed."""
        return await self.unconfirmed.retry(lambda sends: publish_in_order(self.events.broker, sends))

    # -- events -----------------------------------------------------------------------------

    async def queue(self, job_id: str) -> None:
        """submitted -> queued (idempotent: a redelivery re-emits the same event, deduplicated)."""
        now = self.clock()
        seen: list[JobRecord] = []

        def to_queued(r: JobRecord) -> JobRecord | None:
            seen.append(r)
            return lifecycle.advance(r, JobState.QUEUED, now) if r.state == JobState.SUBMITTED else None

        result = await self.store.update(job_id, to_queued)
        # not the view: with several replicas another one may have queued it a moment ago and
        # our view may not show that yet, so trust the record the compare-and-set just read
        record = result[1] if result else (seen[-1] if seen else None)
        if record is not None and (result or record.state == JobState.QUEUED):
            await self._publish(job_id, await self._queued_events(record))

    async def _queued_events(self, record: JobRecord) -> list[Outgoing]:
        """The job's queued event, its submitted event first (see ``_submitted_first``)."""
        queued = JobQueued(job_id=record.job_id, attempt=record.attempt, queue=record.spec.queue)
        return [*await self._submitted_first(record), self.events.outgoing(queued)]

    async def _submitted_first(self, record: JobRecord) -> list[Outgoing]:
        """The job's submitted event, to publish just before its queued one.

        The planner follows the jobs bucket, so it can queue a job before the submission service
        has published that job's submitted event (it writes the record first): followers would see
        queued before submitted. So the scheduler publishes the same event itself, rebuilt from the
        record under the same message id; the stream keeps whichever copy comes first and drops
        the other. This also gives a job whose submitted event was never confirmed (submission
        timed out after writing the record) its event. Past the stream's duplicate window the
        copy would no longer be dropped: an old record is checked against the stream first."""
        submitted = JobSubmitted(
            job_id=record.job_id,
            spec=record.spec.redacted(),
            submitted_by=record.submitted_by,
            time=record.submitted_at,
            traceparent=record.traceparent,
        )
        age = (self.clock() - record.submitted_at).total_seconds()
        if age > SUBMITTED_COPY_UNCHECKED_SECONDS and await self._has_event(submitted):
            return []
        return [self.events.outgoing(submitted)]

    async def _has_event(self, event: JobSubmitted) -> bool:
        js = self.events.broker.config.connection_state.stream
        try:
            await js.get_last_msg(self.events.stream, event.subject(self.events.subjects))
        except NotFoundError:
            return False
        return True

    async def cancel(self, job_id: str, by: str | None = None) -> None:
        """A pending job is cancelled here; an active one gets a cancel command to its executor."""
        now = self.clock()

        def cancel_pending(r: JobRecord) -> JobRecord | None:
            if r.state in (JobState.SUBMITTED, JobState.QUEUED, JobState.REQUEUED):
                return lifecycle.finish(
                    r, JobState.CANCELLED, now, exit_code=None, reason="cancelled before it ran"
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
                    CancelAttempt(job_id=job_id, attempt=record.attempt, executor_id=executor_id)
                )
                for executor_id in record.executors()
            ]
            await self._publish(job_id, commands)

    # -- planning -----------------------------------------------------------------------------

    async def snapshot(self, now: datetime) -> Snapshot:
        """What the policy decides on: pending jobs, what runs where, free room, the queues.

        An attempt an executor still runs although its record moved on (a preempted or
        superseded attempt inside its grace period) still holds its room as an ``ending`` job:
        from the record while it is marked ``stopping`` (even before a heartbeat lists it), and
        from the executor's heartbeat until the record says it ended (room.py).
        """
        online = await self.executors.online(now)
        self.online = online
        used: dict[str, list[float]] = {eid: [0.0, 0, 0] for eid in online}
        pending: list[PendingJob] = []
        running: list[RunningJob] = []
        current: set[tuple[str, int, str]] = set()
        self.held_gpus = held_gpus = {eid: set[int]() for eid in online}

        def holds(record: JobRecord, executor_id: str, replicas: int) -> None:
            spec = record.spec
            held_gpus[executor_id].update(record.gpu_devices(record.attempt, executor_id))
            d = demand_of(record).times(replicas)
            u = used[executor_id]
            u[0] += d.cpu
            u[1] += d.memory
            u[2] += d.gpu
            current.add((record.job_id, record.attempt, executor_id))
            since = record.state_times.get("running") or record.state_times.get("scheduled") or now
            running.append(
                RunningJob(
                    job_id=record.job_id,
                    attempt=record.attempt,
                    executor_id=executor_id,
                    used=d,
                    queue=spec.queue,
                    priority=spec.priority,
                    preemptible=spec.preemptible,
                    started_at=since.timestamp(),
                    timeout=spec.timeout,
                    ending=record.cancel_requested,
                )
            )

        def ending(record: JobRecord, attempt: int, executor_id: str, replicas: int) -> None:
            held_gpus[executor_id].update(record.gpu_devices(attempt, executor_id))
            d = demand_of(record).times(replicas)
            u = used[executor_id]
            u[0] += d.cpu
            u[1] += d.memory
            u[2] += d.gpu
            current.add((record.job_id, attempt, executor_id))
            running.append(
                RunningJob(
                    job_id=record.job_id,
                    attempt=attempt,
                    executor_id=executor_id,
                    used=d,
                    queue=record.spec.queue,
                    priority=record.spec.priority,
                    ending=True,
                )
            )

        hold = self.settings.preemption_grace_seconds + STOPPING_HOLD_SLACK_SECONDS
        for record in self.view.unfinished():
            spec = record.spec
            if record.attempt > 1:  # an earlier attempt the scheduler stopped may still run
                for attempt, eid in stopping_attempts(record, now, hold):
                    if eid in online and (record.job_id, attempt, eid) not in current:
                        ending(record, attempt, eid, spec.replicas)
            gang = record.split_gang() if record.gang is not None else None
            if record.state.active and gang is not None:
                # one row per member executor, with its ranks' room, until its ranks have ended
                for member in gang.members:
                    if member.executor_id in online:
                        if member.state is None:
                            holds(record, member.executor_id, len(member.ranks))
                        else:
                            current.add((record.job_id, record.attempt, member.executor_id))
            elif record.state.active and record.executor_id in online:
                holds(record, record.executor_id, spec.replicas)
            elif awaits_placement(record):
                pending.append(
                    PendingJob(
                        job_id=record.job_id,
                        attempt=record.attempt,
                        priority=spec.priority,
                        submitted_at=record.submitted_at.timestamp(),
                        demand=demand_of(record),
                        replicas=spec.replicas,
                        not_before=record.not_before.timestamp() if record.not_before else None,
                        queue=spec.queue,
                        timeout=spec.timeout,
                    )
                )
        for eid, beat in online.items():
            for ref in beat.running:
                if (ref.job_id, ref.attempt, eid) in current:
                    continue
                record = self.view.get(ref.job_id)
                if record is None and ref.job_id in self.view.revisions:
                    # finished long enough ago to be out of the view's memory, still held by the
                    # executor (a slow clean-up): its room counts until the executor lets go
                    found = await self.store.get(ref.job_id)
                    record = found[0] if found is not None else None
                if record is None or attempt_ended(record, ref.attempt, eid):
                    continue  # the record says it ended: its room is free before the next beat
                # a member of a split gang holds its ranks' room; otherwise (the placement of that
                # attempt replaced already) the whole gang's, which over-counts for a moment only
                gang = record.gang
                member = gang.member(eid) if gang is not None and gang.attempt == ref.attempt else None
                ending(record, ref.attempt, eid, len(member.ranks) if member else record.spec.replicas)
        executors = []
        for eid, beat in sorted(online.items()):
            if beat.draining:  # shutting down: its running rows stay, it gets no room to fill
                executors.append(ExecutorFree(eid, Demand(0.0, 0, 0)))
                continue
            cap: Capacity = beat.capacity
            u = used[eid]
            executors.append(
                ExecutorFree(eid, Demand(cap.cpu - u[0], cap.memory - int(u[1]), cap.gpu - int(u[2])))
            )
        return Snapshot(
            pending=tuple(pending),
            executors=tuple(executors),
            running=tuple(running),
            queues=self.queue_configs(),
        )

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
        return await self.apply(await self.decide(now), now)

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

    # -- explaining ---------------------------------------------------------------------------

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
        r = spec.resources
        probe = PendingJob(
            job_id=probe_id,
            attempt=1,
            priority=spec.priority,
            submitted_at=now.timestamp(),
            demand=Demand(cpu=r.cpu, memory=r.memory, gpu=r.gpu),
            replicas=spec.replicas,
        )
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
        self, decisions: Plan, *, cycle: int, replica: str, term: int, seconds: float
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

    async def apply(self, decisions: Plan, now: datetime) -> Plan:
        """Make each assignment by compare-and-set; one whose job moved on meanwhile is dropped.

        ``decisions`` may be stale (a replica paused between deciding and applying): the CAS
        only moves a job that is still pending at the same attempt, so a stale plan can never
        assign an attempt that another replica has assigned since.
        """
        # each assignment is its own compare-and-set, so they can be in flight together: a
        # chain of awaited round trips per job would cap the scheduler near 100 jobs/s
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
        """Requeue the victim's attempt (a new attempt, not a retry), then tell its executor to
        stop the old one with a grace period; its room stays counted until the executor drops it."""
        if not self.may_assign():
            return
        grace = self.settings.preemption_grace_seconds
        result = await self.store.update(
            victim.job_id,
            lambda r: (
                lifecycle.requeue(
                    r,
                    now,
                    reason="preempted",
                    counts_as_retry=False,
                    detail=f"preempted: {victim.reason}",
                    stopping=True,  # it checkpoints during its grace: its room stays held
                )
                if r.state.active and r.attempt == victim.attempt and r.runs_on(victim.executor_id)
                else None
            ),
        )
        if result is None:
            return  # already requeued (a split gang is one victim per member executor)
        before, after = result
        log.info(
            "preempted a running attempt",
            extra={"job_id": victim.job_id, "attempt": victim.attempt, "for_job": victim.for_job},
        )
        requeued = JobRequeued(
            job_id=victim.job_id,
            attempt=victim.attempt,
            reason="preempted",
            next_attempt=after.attempt,
            detail=after.reason,
        )
        cancels = [  # every member of a split gang
            self.commands.outgoing(
                CancelAttempt(
                    job_id=victim.job_id,
                    attempt=victim.attempt,
                    executor_id=executor_id,
                    reason=f"preempted: {victim.reason}",
                    grace_seconds=grace,
                )
            )
            for executor_id in before.executors()
        ]
        await self._publish(victim.job_id, [self.events.outgoing(requeued), *cancels])

    async def _assign(
        self, job_id: str, attempt: int, executor_id: str, now: datetime, gang: GangPlacement | None = None
    ) -> None:
        if not self.may_assign():
            return  # lost the lease during this pass: the new leader plans from here

        devices = reported_devices(self.online)
        chosen: dict[str, tuple[int, ...]] = {}

        def to_scheduled(r: JobRecord) -> JobRecord | None:
            nonlocal chosen
            if not (awaits_placement(r) and r.attempt == attempt):
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
        if result is None:
            return  # someone else moved it first (cancel, another scheduler): nothing to do
        for eid, indices in chosen.items():
            self.held_gpus.setdefault(eid, set()).update(indices)
        before, record = result
        await self._announce_scheduled(record, queued=before.state == JobState.SUBMITTED)

    async def _announce_scheduled(self, record: JobRecord, *, queued: bool = False) -> None:
        """The scheduled event (after the queued one, when this write also queued the job) and the
        start command(s): one per member of a split gang, each with its ranks and the rendezvous
        from the record, so a re-send is the same command (the exec stream drops the same message
        id; the executor starts its ranks once by compare-and-set).

        All are published together and their acks awaited together (``publish_in_order``)."""
        assert record.executor_id is not None
        r = record.spec.resources
        gang = record.split_gang() if record.gang is not None else None
        sends: list[Outgoing] = []
        # the record travels with its start command: the executor's first write needs no read
        revision = self._revision_of(record)
        carried = {"record": record, "record_revision": revision} if revision else {}
        with job_trace(record.traceparent):
            if queued:
                sends.extend(await self._queued_events(record))
            if record.state == JobState.SCHEDULED:
                sends.append(
                    self.events.outgoing(
                        JobScheduled(
                            job_id=record.job_id,
                            attempt=record.attempt,
                            executor_id=record.executor_id,
                            resources=Capacity(cpu=r.cpu, memory=r.memory, gpu=r.gpu),
                            executors=[m.executor_id for m in gang.members] if gang is not None else [],
                        )
                    )
                )
            # one start per executor: the whole job on one, or each member of a split gang with
            # its ranks (a member that started or ended already gets none)
            starts: list[tuple[str, Rendezvous | None]] = (
                [(record.executor_id, None)]
                if gang is None
                else [
                    (
                        member.executor_id,
                        Rendezvous(
                            master_addr=gang.master_addr,
                            master_port=gang.master_port,
                            world_size=gang.world_size,
                            ranks=member.ranks,
                        ),
                    )
                    for member in gang.members
                    if member.started_at is None and member.state is None
                ]
            )
            room = self.events.broker.config.connection_state.connection.max_payload - HEADERS_ROOM
            for executor_id, rendezvous in starts:
                gpus = record.gpu_devices(record.attempt, executor_id)
                start = start_command(self.commands, record, executor_id, rendezvous, carried, room, gpus)
                if start is None:  # can never be sent: the job fails, the pass goes on
                    sends.extend(await self._fail_unsendable(record, room))
                    break
                sends.append(start)
            await self._publish(record.job_id, sends)

    async def _fail_unsendable(self, record: JobRecord, room: int) -> list[Outgoing]:
        """scheduled -> failed (compare-and-set on this attempt) for a job whose start command
        cannot fit in a message; its failed event, or nothing if the record moved on."""
        reason = unsendable_reason(record, room)
        attempt, now = record.attempt, self.clock()
        result = await self.store.update(
            record.job_id,
            lambda r: (
                lifecycle.finish(r, JobState.FAILED, now, exit_code=None, reason=reason)
                if r.state == JobState.SCHEDULED and r.attempt == attempt
                else None
            ),
        )
        if result is None:
            return []
        log.error("a job's start command cannot be sent; failed it", extra={"job_id": record.job_id})
        failed = JobFailed(
            job_id=record.job_id, attempt=attempt, executor_id=record.executor_id, reason=reason
        )
        return [self.events.outgoing(failed)]

    def _revision_of(self, record: JobRecord) -> int | None:
        """The KV revision of exactly this record object, if this scheduler wrote or saw it."""
        known = self.store.remembered(record.job_id)
        if known is not None and known[0] is record:
            return known[1]
        if self.view.get(record.job_id) is record:
            return self.view.revisions.get(record.job_id)
        return None

    # -- recovery -----------------------------------------------------------------------------

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
        if not self.may_assign():
            return
        attempt = record.attempt
        result = await self.store.update(
            record.job_id,
            lambda r: (
                lifecycle.requeue(
                    r,
                    now,
                    reason="executor_lost",
                    counts_as_retry=False,
                    detail=f"executor {lost} stopped sending heartbeats",
                    stopping=True,  # it may come back still running it
                )
                if r.state.active and r.attempt == attempt and (r.executor_id == lost or r.runs_on(str(lost)))
                else None
            ),
        )
        if result is None:
            return
        before, after = result
        log.warning(
            "requeued the attempt of a lost executor",
            extra={"job_id": record.job_id, "attempt": attempt, "executor_id": lost},
        )
        requeued = JobRequeued(
            job_id=record.job_id,
            attempt=attempt,
            reason="executor_lost",
            next_attempt=after.attempt,
            detail=after.reason,
        )
        # the lost one must not keep running the old attempt if it comes back; the other members
        # of a split gang stop their ranks now (they could not finish without the lost ones)
        cancels = [
            self.commands.outgoing(
                CancelAttempt(
                    job_id=record.job_id,
                    attempt=attempt,
                    executor_id=executor_id,
                    reason="attempt superseded after executor loss"
                    if executor_id == lost
                    else f"the gang lost executor {lost}",
                    grace_seconds=0,
                )
            )
            for executor_id in before.executors() or ([lost] if lost else [])
        ]
        await self._publish(record.job_id, [self.events.outgoing(requeued), *cancels])
