"""The scheduler service: one durable consumer of job events, and a planning loop.

Several replicas may run. Each consumes job events (one shared durable consumer, so each event is
handled once, by whichever replica pulls it; the handlers are compare-and-set idempotent). Only the
replica holding the leader lease (leader.py) runs the planning loop and the reconciler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from faststream.asgi import AsgiFastStream
from faststream.nats.annotations import NatsMessage
from prometheus_client import Gauge

from trainyard_contracts import DryRunRequest, JobEvent, JobState, WhyRequest, parse_job_event
from trainyard_scheduler.core import SchedulerCore
from trainyard_scheduler.leader import LeaderLease
from trainyard_scheduler.placement import Plan
from trainyard_scheduler.room import frees_room
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_shared.batches import batch_consumer
from trainyard_shared.binding import bind_bus
from trainyard_shared.broker import make_broker
from trainyard_shared.bus import streams
from trainyard_shared.commands import CommandSender
from trainyard_shared.events import EventPublisher, publish_acked
from trainyard_shared.executors import ExecutorDirectory
from trainyard_shared.jobsecrets import SecretStore, just_ended_with_secrets
from trainyard_shared.jobstore import JobStore
from trainyard_shared.jobview import JobView
from trainyard_shared.queueview import QueueView
from trainyard_shared.runner import build_app
from trainyard_shared.settings import CommonSettings
from trainyard_shared.tracing import setup_tracing

log = logging.getLogger("trainyard.scheduler")


def create_app(
    common: CommonSettings | None = None, settings: SchedulerSettings | None = None
) -> AsgiFastStream:
    common = common or CommonSettings()
    settings = settings or SchedulerSettings()
    sb = make_broker(common, "scheduler", tracer_provider=setup_tracing("scheduler"))
    broker, subjects = sb.broker, sb.subjects
    wake = asyncio.Event()
    state: dict[str, object] = {"registry": sb.registry}

    def core() -> SchedulerCore:
        return state["core"]  # type: ignore[return-value]

    @batch_consumer(
        sb,
        "",
        stream=streams(subjects).jobs,
        durable="scheduler-job-requests",
        parse=parse_job_event,
        batch=256,
        # cancels side by side; one job's requests stay in order
        concurrency=64,
        key=lambda event: event.job_id,
        # only what asks the scheduler for something: a cancel. Everything else reaches it
        # through the job view's KV watch, which it needs anyway: a new record (submitted) or a
        # job that became pending or ended wakes the planner there, so the submitted event is
        # not consumed (a delivery, a parse of the spec and an ack fewer per job)
        filter_subjects=[subjects.job_event_kind("cancel_requested")],
        title="scheduler/job-requests",
        description="cancels on request",
    )
    async def on_job_event(event: JobEvent) -> None:
        if event.type == "submitted":  # from a consumer made before its filter was narrowed
            wake.set()
        elif event.type == "cancel_requested":
            await core().cancel(event.job_id, event.by)

    leader_gauge = Gauge(
        "trainyard_scheduler_leader",
        "1 while this replica holds the scheduler lease (runs planning and reconciling), else 0",
        ["replica"],
        registry=sb.registry,
    )
    term_gauge = Gauge(
        "trainyard_scheduler_leader_term",
        "the term of the scheduler lease this replica holds or last held",
        ["replica"],
        registry=sb.registry,
    )
    leader_gauge.labels(replica=settings.replica_id).set(0)

    forgetting: set[asyncio.Task[bool]] = set()

    def forget_secrets(secrets: SecretStore, job_id: str) -> None:
        """A job ended: its secret values go (every replica may do it; a purge is idempotent)."""
        task = asyncio.get_running_loop().create_task(secrets.discard(job_id), name=f"forget-{job_id}")
        forgetting.add(task)
        task.add_done_callback(forgetting.discard)

    def lease() -> LeaderLease:
        return state["lease"]  # type: ignore[return-value]

    def on_leadership(leader: bool, term: int) -> None:
        leader_gauge.labels(replica=settings.replica_id).set(1 if leader else 0)
        term_gauge.labels(replica=settings.replica_id).set(term)
        wake.set()  # a new leader plans at once

    async def connect() -> None:
        await broker.connect()
        buckets = await bind_bus(broker, common)
        store = JobStore(buckets.jobs)
        # finished jobs beyond the most recent ones are not kept: the bucket holds every job the
        # installation ever ran (docs/scheduling.md, "Memory")
        view = JobView(buckets.jobs, keep_finished=settings.keep_finished_records)
        store.on_written(view.apply)
        await view.start()
        # plan again when a job becomes pending, or one ends or a stopped attempt's process has
        # ended (room.py) and frees its capacity
        view.on_change(
            lambda before, after: (
                wake.set()
                if after.state.pending
                or after.state.terminal
                or after.state == JobState.SUBMITTED
                or frees_room(before, after)
                else None
            )
        )
        store.read_through(view)
        state["view"] = view
        secrets = SecretStore(buckets.secrets)
        view.on_change(
            lambda before, after: (
                forget_secrets(secrets, after.job_id) if just_ended_with_secrets(before, after) else None
            )
        )
        queue_view = QueueView(buckets.queues)
        await queue_view.start()
        state["queue_view"] = queue_view
        leader = LeaderLease(
            buckets.leases,
            settings.replica_id,
            lease_seconds=settings.lease_seconds,
            renew_seconds=settings.renew_seconds,
        )
        leader.on_change(on_leadership)
        state["lease"] = leader
        directory = ExecutorDirectory(buckets.executors)
        await directory.start()
        state["directory"] = directory
        state["core"] = SchedulerCore(
            store,
            view,
            EventPublisher(broker, subjects),
            CommandSender(broker, subjects),
            directory,
            settings,
            may_assign=lambda: leader.is_leader,
            queue_configs=queue_view.configs,
        )

    async def start_loop() -> None:
        state["task"] = asyncio.create_task(planning_loop(), name="planning-loop")
        lease().start()

    async def publish_cycle(decided: Plan, cycle: int, seconds: float) -> None:
        event = core().cycle_decisions(
            decided, cycle=cycle, replica=settings.replica_id, term=lease().term, seconds=seconds
        )
        await publish_acked(
            broker,
            subjects.scheduler_decisions,
            event.model_dump_json().encode(),
            {"Nats-Msg-Id": f"cycle:{settings.replica_id}:{lease().term}:{cycle}"},
            subjects.streams.scheduler,
        )

    # questions for the leader: every replica listens (no queue group), only the leader answers,
    # so a request never lands on a standby that would leave it unanswered
    # no_reply: the leader answers itself; faststream would also publish the handler's None as a
    # second, empty answer (a standby's could arrive first, and NATS' allow_responses refuses it)
    @broker.subscriber(
        subjects.scheduler_why, no_reply=True, title="scheduler/why", description="why a job waits"
    )
    async def on_why(request: WhyRequest, message: NatsMessage) -> None:
        if lease().is_leader and message.reply_to:
            answer = await core().why(request.job_id, leader=settings.replica_id)
            await broker.publish(answer.model_dump_json().encode(), message.reply_to)

    @broker.subscriber(
        subjects.scheduler_dry_run,
        no_reply=True,
        title="scheduler/dry-run",
        description="what would happen to a spec now",
    )
    async def on_dry_run(request: DryRunRequest, message: NatsMessage) -> None:
        if lease().is_leader and message.reply_to:
            answer = await core().dry_run(request.spec, leader=settings.replica_id)
            await broker.publish(answer.model_dump_json().encode(), message.reply_to)

    async def planning_loop() -> None:
        """Every replica runs this loop; only the leader's passes do anything."""
        loop = asyncio.get_running_loop()
        term = 0
        next_reconcile = 0.0
        while not state.get("stopping"):
            # an announcement owed after a failed publish is retried when due, not at the next tick
            owed = core().unconfirmed.next_due()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    wake.wait(), min(settings.tick_seconds, owed if owed is not None else 1e9)
                )
            wake.clear()
            if state.get("stopping"):
                continue
            if owed is not None:  # the writes stand whoever leads now: what they owe follows them
                try:
                    await core().retry_unconfirmed()
                except Exception:
                    log.exception("retrying unconfirmed announcements failed")
            if not lease().is_leader:
                continue
            try:
                takeover = lease().term != term
                if takeover:  # a new term: see the last leader's writes before planning on them
                    if not await core().catch_up(settings.lease_seconds):
                        log.warning("job view not confirmed current after taking over; planning anyway")
                    term = lease().term
                started = loop.time()
                decided = await core().plan_pass()
                if decided.assignments or decided.victims:  # a pass that changed nothing is no event
                    cycle = state["cycle"] = int(state.get("cycle", 0)) + 1  # type: ignore[call-overload]
                    await publish_cycle(decided, cycle, loop.time() - started)
                # every fifth tick's worth of time, not every fifth pass: under load a pass runs
                # per few jobs, and a reconcile looks at every live job
                if takeover or loop.time() >= next_reconcile:
                    await core().reconcile(resend_scheduled=takeover)
                    next_reconcile = loop.time() + 5 * settings.tick_seconds
            except Exception:
                log.exception("planning pass failed; retrying on the next tick")

    async def stop_loop() -> None:
        # let a pass in flight finish its announcements, then hand the lease to a standby
        state["stopping"] = True
        wake.set()
        task = state.get("task")
        if isinstance(task, asyncio.Task):
            try:
                await asyncio.wait_for(task, settings.lease_seconds)
            except (TimeoutError, asyncio.CancelledError):
                pass
        leader = state.get("lease")
        if isinstance(leader, LeaderLease):
            await leader.stop(release=True)
        view = state.get("view")
        if isinstance(view, JobView):
            await view.stop()
        queue_view = state.get("queue_view")
        if isinstance(queue_view, QueueView):
            await queue_view.stop()
        directory = state.get("directory")
        if isinstance(directory, ExecutorDirectory):
            await directory.stop()

    app = build_app(
        sb,
        title="trainyard-scheduler",
        description="Trainyard scheduler: the queue and placement of jobs on executors",
        on_startup=[connect],
        after_startup=[start_loop],
        on_shutdown=[stop_loop],
    )
    app.context.set_global("scheduler_state", state)
    return app
