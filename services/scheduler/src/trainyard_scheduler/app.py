"""The scheduler service: one durable consumer of job requests, two questions, a planning loop.

Several replicas may run. Each consumes job requests (one shared durable consumer, so each is
handled once, by whichever replica pulls it; the handlers are compare-and-set idempotent). Only the
replica holding the leader lease (leader.py) plans and reconciles (planning.py). What the handlers
use is built once at start-up (runtime.py).
"""

from __future__ import annotations

import asyncio

from faststream.asgi import AsgiFastStream
from faststream.nats.annotations import NatsMessage
from nats.aio.msg import Msg

from trainyard_contracts import DryRunRequest, JobEvent, WhyRequest, parse_job_event
from trainyard_contracts.reports import ExecutorReport
from trainyard_scheduler.runtime import SchedulerRuntime, build_runtime, leadership_gauges
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_shared.broker import ServiceBroker, make_broker
from trainyard_shared.bus import streams
from trainyard_shared.deadletter import park
from trainyard_shared.natsusers import REPORTS_DURABLE
from trainyard_shared.pullconsumer import batch_consumer
from trainyard_shared.runner import build_app
from trainyard_shared.runtimeslot import RUNTIME, RuntimeSlot
from trainyard_shared.settings import CommonSettings
from trainyard_shared.tracing import setup_tracing

NOT_ITS_SUBJECT = "the report names another executor or job than its subject"


def subscribe_requests(sb: ServiceBroker, slot: RuntimeSlot[SchedulerRuntime], replica: str) -> None:
    subjects = sb.subjects

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
        # job that became pending or ended wakes the planner there (runtime.wakes_planner)
        filter_subjects=[subjects.job_event_kind("cancel_requested")],
        title="scheduler/job-requests",
        description="cancels on request",
    )
    async def on_job_event(event: JobEvent) -> None:
        if event.type == "cancel_requested":
            await slot.get().core.cancel(event.job_id, event.by, event.reason)

    # executors' reports: every replica applies them (one shared durable consumer, so each is
    # handled once), safe from any replica because each is a compare-and-set fenced on the
    # reporting executor and attempt (trainyard_shared.reports)
    @batch_consumer(
        sb,
        subjects.all_exec_reports,
        stream=streams(subjects).reports,
        durable=REPORTS_DURABLE,
        parse=ExecutorReport.model_validate_json,
        batch=256,
        concurrency=64,
        key=lambda report: report.job_id,  # one job's reports in the order its executors sent them
        with_message=True,
        title="scheduler/exec-reports",
        description="what executors report about their attempts, written into the job records",
    )
    async def on_report(report: ExecutorReport, raw: Msg) -> None:
        # the subject proves who spoke (an executor may publish on its own subjects only): a body
        # that names another executor or job is refused
        if raw.subject != subjects.exec_report(report.executor_id, report.job_id):
            await park(
                sb.broker,
                subjects,
                sb.service,
                raw,
                "the report names another executor or job than its subject",
            )
            return
        await slot.get().reports.apply(report)

    # questions for the leader: every replica listens (no queue group), only the leader answers,
    # so a request never lands on a standby that would leave it unanswered
    # no_reply: the leader answers itself; faststream would also publish the handler's None as a
    # second, empty answer (a standby's could arrive first, and NATS' allow_responses refuses it)
    @sb.broker.subscriber(
        subjects.scheduler_why, no_reply=True, title="scheduler/why", description="why a job waits"
    )
    async def on_why(request: WhyRequest, message: NatsMessage) -> None:
        runtime = slot.get()
        if runtime.lease.is_leader and message.reply_to:
            answer = await runtime.core.why(request.job_id, leader=replica)
            await sb.broker.publish(answer.model_dump_json().encode(), message.reply_to)

    @sb.broker.subscriber(
        subjects.scheduler_dry_run,
        no_reply=True,
        title="scheduler/dry-run",
        description="what would happen to a spec now",
    )
    async def on_dry_run(request: DryRunRequest, message: NatsMessage) -> None:
        runtime = slot.get()
        if runtime.lease.is_leader and message.reply_to:
            answer = await runtime.core.dry_run(request.spec, leader=replica)
            await sb.broker.publish(answer.model_dump_json().encode(), message.reply_to)


def create_app(
    common: CommonSettings | None = None, settings: SchedulerSettings | None = None
) -> AsgiFastStream:
    common = common or CommonSettings()
    settings = settings or SchedulerSettings()
    sb = make_broker(common, "scheduler", tracer_provider=setup_tracing("scheduler"))
    wake = asyncio.Event()
    slot: RuntimeSlot[SchedulerRuntime] = RuntimeSlot("scheduler")
    on_leadership = leadership_gauges(sb.registry, settings.replica_id, wake)
    subscribe_requests(sb, slot, settings.replica_id)

    async def connect() -> None:
        slot.set(await build_runtime(sb, common, settings, wake, on_leadership))

    async def start() -> None:
        slot.get().start()

    async def stop() -> None:
        if slot.started:
            await slot.get().stop()

    app = build_app(
        sb,
        title="trainyard-scheduler",
        description="Trainyard scheduler: the queue and placement of jobs on executors",
        on_startup=[connect],
        after_startup=[start],
        on_shutdown=[stop],
    )
    app.context.set_global(RUNTIME, slot)
    return app
