"""The workflow service: pipeline runs on the bus. One faststream app; handlers stay thin.

- job outcomes (``<prefix>.job.*.{succeeded,failed,timed_out,cancelled}``), through one durable
  consumer with bounded redelivery: a step's job ended, its run moves on;
- requests from the API on ``<prefix>.workflow.{run,status,list,cancel,retry}`` (request/reply, one
  queue group): the submission service keeps the one public URL and token check;
- a look-over of open runs at start-up and every ``reconcile_seconds``: what a restart left
  unanswered is sent again under the same idempotency key;
- schedules: the API's ``schedule-<verb>`` requests (schedule_routes.py) and a ticker that fires
  each due tick once, on the replica holding the schedule lease (schedule_ticker.py);
- triggers: the API's ``trigger-<verb>`` requests (trigger_routes.py), durable consumers of the
  events triggers follow, and the ticker's pass that fires closed debounce windows (triggers.py);
- sweeps: the API's ``sweep-<verb>`` requests (sweep_routes.py), trials' reports from the metrics
  stream (a durable consumer) and their jobs' outcomes, the look-over (sweeps.py).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from faststream.asgi import AsgiFastStream
from nats.aio.msg import Msg

from trainyard_contracts import JobEvent, JobRecord, MetricsBatch, SpecError, parse_job_event
from trainyard_contracts._time import utcnow
from trainyard_contracts.events import JobCancelRequested
from trainyard_contracts.runs import (
    MAX_OPEN_JOBS,
    MAX_REPLY_JOBS,
    PipelineEnvelope,
    PipelineReply,
    PipelineRequest,
    PipelineRun,
)
from trainyard_shared.binding import connect_and_bind
from trainyard_shared.broker import ServiceBroker, make_broker
from trainyard_shared.bus import streams
from trainyard_shared.jobstore import JobStore
from trainyard_shared.leader import LeaderLease
from trainyard_shared.natshandle import NatsHandle
from trainyard_shared.natsusers import MODEL_TRIGGERS_DURABLE, SWEEP_METRICS_DURABLE, TRIGGER_EVENTS_DURABLE
from trainyard_shared.publishing import Outgoing, publish_acked, publish_begun
from trainyard_shared.pullconsumer import batch_consumer
from trainyard_shared.responder import answer_requests
from trainyard_shared.runner import build_app
from trainyard_shared.runtimeslot import RUNTIME, RuntimeSlot
from trainyard_shared.settings import CommonSettings
from trainyard_shared.tasks import cancel_and_wait
from trainyard_shared.tracing import setup_tracing
from trainyard_workflow.core import RetryRefused
from trainyard_workflow.intake import IntakeSender
from trainyard_workflow.schedule_routes import register_schedule_handlers
from trainyard_workflow.schedule_store import ScheduleStore
from trainyard_workflow.schedule_ticker import SCHEDULE_LEASE_KEY, ScheduleTicker
from trainyard_workflow.schedules import ScheduleService
from trainyard_workflow.service import JOB_OUTCOMES, WorkflowService
from trainyard_workflow.settings import WorkflowSettings
from trainyard_workflow.stepcache import StepCacheStore
from trainyard_workflow.store import RunNotFound, RunStore
from trainyard_workflow.sweep_routes import register_sweep_handlers
from trainyard_workflow.sweeps import SweepService, SweepStore, trial_of
from trainyard_workflow.trigger_core import Event
from trainyard_workflow.trigger_routes import register_trigger_handlers
from trainyard_workflow.triggers import TriggerService, TriggerStore, allowed_patterns

REQUEST_KINDS = ("run", "status", "list", "cancel", "retry")


@dataclass
class WorkflowRuntime:
    """The composition root: what the handlers use, built once the broker has connected."""

    service: WorkflowService
    schedules: ScheduleService
    triggers: TriggerService
    sweeps: SweepService
    ticker: ScheduleTicker
    reconciler: asyncio.Task[None] | None = None


async def build_runtime(
    sb: ServiceBroker,
    common: CommonSettings,
    settings: WorkflowSettings,
    clock: Callable[[], datetime] = utcnow,
) -> WorkflowRuntime:
    buckets = await connect_and_bind(sb, common)
    connection = sb.broker.config.connection_state
    jobs = JobStore(buckets.jobs, remember=0)

    async def read_job(job_id: str) -> JobRecord | None:
        found = await jobs.get(job_id)
        return found[0] if found else None

    intake = IntakeSender(
        connection.connection,
        connection.stream,
        sb.subjects.intake_workflow,
        timeout=settings.intake_timeout_seconds,
        concurrency=settings.submit_concurrency,
        token=settings.token,
    )
    runs = RunStore(buckets.pipelines)
    service = WorkflowService(
        runs,
        read_job,
        intake,
        _emitter(sb),
        clock,
        cache=StepCacheStore(buckets.step_cache),
        blob_stored=functools.partial(_blob_stored, sb),
        emit_many=_many_emitter(sb),
    )
    schedules = ScheduleService(
        ScheduleStore(buckets.schedules), runs, service.start_spec, service.cancel, clock
    )
    lease = LeaderLease(
        buckets.leases,
        settings.replica_id,
        lease_seconds=settings.schedule_lease_seconds,
        key=SCHEDULE_LEASE_KEY,  # on the wall clock, whatever clock the schedules read
    )
    triggers = TriggerService(
        TriggerStore(buckets.triggers),
        runs,
        service.start_spec,
        allowed_patterns(sb.subjects, common.trigger_subjects),
        functools.partial(_trigger_stream_heads, sb),
        clock,
    )
    sweeps = SweepService(
        SweepStore(buckets.sweeps),
        read_job,
        intake,
        functools.partial(_ask_cancel, sb),
        functools.partial(_last_batch, sb),
        clock,
    )
    # a sweep as a pipeline step: the run starts it, its end moves the run on
    service.sweeps = sweeps
    sweeps.on_owned_end, sweeps.owner_wants = service.on_sweep_ended, service.sweep_wanted
    ticker = ScheduleTicker([schedules.tick, triggers.tick], lease, settings.schedule_tick_seconds)
    return WorkflowRuntime(service, schedules, triggers, sweeps, ticker)


def create_app(
    common: CommonSettings | None = None,
    settings: WorkflowSettings | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> AsgiFastStream:
    """``clock``: what schedules read the time from (a test's simulated clock)."""
    common = common or CommonSettings()
    settings = settings or WorkflowSettings()
    sb = make_broker(common, "workflow", tracer_provider=setup_tracing("workflow"))
    slot: RuntimeSlot[WorkflowRuntime] = RuntimeSlot("workflow")

    _job_consumers(sb, slot)
    for kind in REQUEST_KINDS:
        _request_handler(sb, kind, slot)
    register_schedule_handlers(sb, lambda: slot.get().schedules)
    register_trigger_handlers(sb, lambda: slot.get().triggers)
    register_sweep_handlers(sb, lambda: slot.get().sweeps)
    _trigger_consumers(sb, common, slot)

    async def connect() -> None:
        slot.set(await build_runtime(sb, common, settings, clock))

    async def start_reconciler() -> None:
        runtime = slot.get()
        runtime.reconciler = asyncio.create_task(
            _reconcile_forever(
                [runtime.service.reconcile, runtime.sweeps.reconcile], settings.reconcile_seconds
            )
        )
        runtime.ticker.start()

    async def stop_reconciler() -> None:
        if slot.started:
            await slot.get().ticker.stop()
            await slot.get().service.stop()
        task = slot.get().reconciler if slot.started else None
        await cancel_and_wait(task)  # cancelled again until it ends: one cancel can be lost

    app = build_app(
        sb,
        title="trainyard-workflow",
        description="Trainyard workflow: pipelines (DAGs of jobs) and job arrays on the bus",
        on_startup=[connect],
        after_startup=[start_reconciler],
        on_shutdown=[stop_reconciler],
    )
    app.context.set_global(RUNTIME, slot)
    return app


def _job_consumers(sb: ServiceBroker, slot: RuntimeSlot[WorkflowRuntime]) -> None:
    """What the service follows of jobs: their outcomes (steps, array items, sweep trials move on)
    and what running jobs report (a sweep trial's objective values)."""
    subjects = sb.subjects

    @batch_consumer(
        sb,
        subjects.all_job_events,
        stream=streams(subjects).jobs,
        durable="workflow-job-outcomes",
        filter_subjects=[subjects.job_event_kind(kind) for kind in (*JOB_OUTCOMES, "model_registered")],
        parse=parse_job_event,
        batch=64,
        concurrency=16,
        # outcomes of one run's jobs may be handled side by side: each is a compare-and-set on the
        # run's record, read again on a conflict
        key=lambda event: event.job_id,
        title="workflow/job-outcomes",
        description="a step's job ended: its pipeline run moves on (next steps, skips, the end)",
    )
    async def on_job_outcome(event: JobEvent) -> None:
        runtime = slot.get()
        record = await runtime.service.read_job(event.job_id)
        if event.type == "model_registered":  # a step's model version: its dependents may go
            await runtime.service.on_model_registered(record)
            return
        if trial_of(record) is not None:
            await runtime.sweeps.on_job_ended(record, event.type)
        else:
            await runtime.service.on_job_ended(event.job_id, event.type, record)

    @batch_consumer(
        sb,
        subjects.metrics_of(),
        stream=streams(subjects).metrics,
        durable=SWEEP_METRICS_DURABLE,
        parse=MetricsBatch.model_validate_json,
        batch=64,
        concurrency=8,
        key=lambda batch: batch.job_id,  # one job's batches in order
        linger=0.2,  # off the job path: gathered, fewer pulls
        title="workflow/sweep-metrics",
        description="what running jobs report: a sweep trial's objective values go to its pruner",
    )
    async def on_metrics(batch: MetricsBatch) -> None:
        await slot.get().sweeps.on_metrics(batch)


def _trigger_consumers(sb: ServiceBroker, common: CommonSettings, slot: RuntimeSlot[WorkflowRuntime]) -> None:
    """The events triggers follow: the triggers stream (``<prefix>.trigger.>`` and the operator's
    allow-list of other systems' subjects) and the model events (Trainyard's and MLflow's). One message
    unacknowledged at a time over every replica: each trigger sees its events in stream order."""
    subjects = sb.subjects
    bound = streams(subjects)
    sources = (
        (
            bound.triggers,
            subjects.trigger_events,
            TRIGGER_EVENTS_DURABLE,
            [subjects.trigger_events, *common.trigger_subjects],
        ),
        (bound.models, subjects.all_model_events, MODEL_TRIGGERS_DURABLE, None),
    )
    for stream, subject, durable, filters in sources:

        @batch_consumer(
            sb,
            subject,
            stream=stream,
            durable=durable,
            filter_subjects=filters,
            parse=bytes,  # the body as it came: a bad event is counted on its triggers, not dead-lettered
            with_message=True,
            batch=1,
            max_ack_pending=1,
            title=f"workflow/{durable}",
            description="an event on a subject triggers follow: each matching trigger starts its pipeline",
        )
        async def on_trigger_event(body: bytes, raw: Msg) -> None:
            meta = raw.metadata
            event = Event(stream=meta.stream, seq=meta.sequence.stream, subject=raw.subject, body=body)
            await slot.get().triggers.on_event(event)


async def _blob_stored(sb: ServiceBroker, digest: str) -> bool:
    """Whether the step outputs bucket holds the blob ``digest`` (its meta, one message)."""
    from trainyard_shared.blobs.store import has_blob, open_store

    js = NatsHandle(sb.broker).jetstream
    return await has_blob(await open_store(js, sb.subjects.step_outputs_bucket), digest)


async def _trigger_stream_heads(sb: ServiceBroker) -> dict[str, int]:
    """The last sequence of each stream triggers read (a new trigger starts after them)."""
    js = NatsHandle(sb.broker).jetstream
    names = (sb.subjects.streams.triggers, sb.subjects.streams.models)
    return {name: int((await js.stream_info(name)).state.last_seq or 0) for name in names}


def _emitter(sb: ServiceBroker) -> Any:
    async def emit(event: PipelineEnvelope) -> None:
        await publish_acked(sb.broker, *_outgoing(sb, event))

    return emit


def _many_emitter(sb: ServiceBroker) -> Any:
    """A turn's events published in their order; what it returns awaits their acks together
    (one round trip, not one per event; the turn's submissions go before it is awaited)."""

    async def emit_many(events: list[PipelineEnvelope]) -> Awaitable[Any]:
        return await publish_begun(sb.broker, [_outgoing(sb, event) for event in events])

    return emit_many


def _outgoing(sb: ServiceBroker, event: PipelineEnvelope) -> Outgoing:
    return Outgoing(
        sb.subjects.pipeline(event.run_id, event.type),
        event.model_dump_json().encode(),
        {"Nats-Msg-Id": event.msg_id(), "content-type": "application/json"},
        sb.subjects.streams.pipelines,
    )


def _request_handler(sb: ServiceBroker, kind: str, slot: RuntimeSlot[WorkflowRuntime]) -> None:
    async def answer(body: bytes) -> PipelineReply:
        return await _answer(slot.get().service, kind, body)

    answer_requests(
        sb,
        sb.subjects.workflow_request(kind),
        "workflow",
        f"workflow/{kind}",
        f"the API's {kind} request (PipelineRequest) answered with a PipelineReply",
        answer,
    )


async def _answer(service: WorkflowService, kind: str, body: bytes) -> PipelineReply:
    try:
        request = PipelineRequest.model_validate_json(body)
        if kind == "run":
            started = await service.start(request.pipeline, request.params, request.by, request.no_cache)
            return _run_reply(started, 201)
        if kind == "list":
            runs = await service.runs.listed(request.limit)
            return PipelineReply(ok=True, runs=[run.trimmed(LISTED_JOBS) for run in runs])
        if not request.run_id:
            return _error("run_id", "required field is missing", 422)
        if kind == "status":
            return _run_reply(await service.status(request.run_id))
        if kind == "retry":
            return _run_reply(await service.retry(request.run_id, request.by, request.attempt))
        return _run_reply(await service.cancel(request.run_id, request.by))
    except SpecError as exc:
        return PipelineReply(ok=False, errors=exc.errors, status=422)
    except RunNotFound as exc:
        return _error("run_id", f"no pipeline run {exc.args[0]!r}", 404)
    except RetryRefused as exc:
        return _error("run_id", str(exc), 409)
    except ValueError as exc:  # a request that is not a PipelineRequest
        return _error("(request)", str(exc)[:1000], 400)


LISTED_JOBS = 10  # per step of each listed run: a list of 1,000 runs still fits a message


def _run_reply(run: PipelineRun, status: int = 200) -> PipelineReply:
    """One run, bounded to fit a message: its jobs trimmed per step, with every step's counts and
    the ids a cancel stops beside it."""
    shown = run.trimmed(MAX_REPLY_JOBS)
    return PipelineReply(
        ok=True,
        run=shown,
        status=status,
        counts=run.job_counts(),
        open_job_ids=run.open_job_ids()[:MAX_OPEN_JOBS],
        trimmed=shown is not run,
    )


def _error(field: str, message: str, status: int) -> PipelineReply:
    from trainyard_contracts import FieldError

    return PipelineReply(ok=False, errors=[FieldError(field=field, message=message)], status=status)


async def _reconcile_forever(looks: list[Callable[[], Awaitable[int]]], every: float) -> None:
    import logging

    log = logging.getLogger("trainyard.workflow")
    while True:
        for look in looks:
            try:
                await look()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("looking over open runs and sweeps failed; trying again")
        await asyncio.sleep(every)


async def _ask_cancel(sb: ServiceBroker, job_id: str, attempt: int, by: str, reason: str) -> None:
    """A sweep trial's job cancelled as the API asks for one: the cancel_requested event, which
    the scheduler acts on (the job ends ``cancelled`` with ``reason``)."""
    event = JobCancelRequested(job_id=job_id, attempt=attempt, by=by, reason=reason)
    await publish_acked(
        sb.broker,
        sb.subjects.job(job_id, event.type),
        event.model_dump_json().encode(),
        {"Nats-Msg-Id": event.msg_id(), "content-type": "application/json"},
        sb.subjects.streams.jobs,
    )


async def _last_batch(sb: ServiceBroker, job_id: str, attempt: int) -> MetricsBatch | None:
    """The last batch of a job attempt's reports (one message read), or None."""
    from nats.js.errors import NotFoundError

    js = NatsHandle(sb.broker).jetstream
    try:
        msg = await js.get_last_msg(sb.subjects.streams.metrics, sb.subjects.metrics(job_id, attempt))
    except NotFoundError:
        return None
    try:
        return MetricsBatch.model_validate_json(msg.data or b"")
    except ValueError:
        return None
