"""The scheduler service: one durable consumer of job events, and a planning loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from faststream import AckPolicy
from faststream.asgi import AsgiFastStream
from faststream.nats import ConsumerConfig, PullSub

from trainyard_contracts import TERMINAL_EVENT_TYPES, JobEvent
from trainyard_scheduler.core import SchedulerCore
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_shared.broker import make_broker
from trainyard_shared.bus import ensure_streams, open_buckets, streams
from trainyard_shared.commands import CommandSender
from trainyard_shared.events import EventPublisher
from trainyard_shared.executors import ExecutorDirectory
from trainyard_shared.jobstore import JobStore
from trainyard_shared.jobview import JobView
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
    state: dict[str, object] = {}

    def core() -> SchedulerCore:
        return state["core"]  # type: ignore[return-value]

    @broker.subscriber(
        subjects.all_job_events,
        stream=streams(subjects).jobs,
        durable="scheduler-events",
        pull_sub=PullSub(batch_size=64, timeout=0.5),
        config=ConsumerConfig(max_deliver=5, ack_wait=30),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title="scheduler/job-events",
        description="queues submitted jobs, cancels on request, re-plans when capacity frees up",
    )
    async def on_job_event(event: JobEvent) -> None:
        if event.type == "submitted":
            await core().queue(event.job_id)
        elif event.type == "cancel_requested":
            await core().cancel(event.job_id, event.by)
        if event.type in TERMINAL_EVENT_TYPES or event.type in ("submitted", "requeued"):
            wake.set()

    async def connect() -> None:
        await broker.connect()
        await ensure_streams(broker, subjects, common.stream_replicas)
        buckets = await open_buckets(broker, subjects, common.stream_replicas)
        store = JobStore(buckets.jobs)
        view = JobView(buckets.jobs)
        store.on_written(view.apply)
        await view.start()
        view.on_change(lambda before, after: wake.set() if after.state.pending else None)
        state["view"] = view
        state["core"] = SchedulerCore(
            store,
            view,
            EventPublisher(broker, subjects),
            CommandSender(broker, subjects),
            ExecutorDirectory(buckets.executors),
            settings,
        )

    async def start_loop() -> None:
        state["task"] = asyncio.create_task(planning_loop(), name="planning-loop")

    async def planning_loop() -> None:
        passes = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), settings.tick_seconds)
            wake.clear()
            try:
                await core().plan_pass()
                passes += 1
                if passes % 5 == 1:
                    await core().reconcile()
            except Exception:
                log.exception("planning pass failed; retrying on the next tick")

    async def stop_loop() -> None:
        task = state.get("task")
        if isinstance(task, asyncio.Task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        view = state.get("view")
        if isinstance(view, JobView):
            await view.stop()

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
