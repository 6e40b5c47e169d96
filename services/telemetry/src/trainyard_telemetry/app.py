"""The telemetry service: every job event into Prometheus metrics; nothing on the job path.

Its consumer is durable, so after a restart it catches up from where it stopped.
"""

from __future__ import annotations

from faststream import AckPolicy
from faststream.asgi import AsgiFastStream
from faststream.nats import ConsumerConfig, PullSub

from trainyard_contracts import JobEvent
from trainyard_shared.broker import make_broker
from trainyard_shared.bus import ensure_streams, open_buckets, streams
from trainyard_shared.jobview import JobView
from trainyard_shared.runner import build_app
from trainyard_shared.settings import CommonSettings
from trainyard_shared.tracing import setup_tracing
from trainyard_telemetry.metrics import JobMetrics
from trainyard_telemetry.settings import TelemetrySettings


def create_app(
    common: CommonSettings | None = None, settings: TelemetrySettings | None = None
) -> AsgiFastStream:
    common = common or CommonSettings()
    settings = settings or TelemetrySettings()
    sb = make_broker(common, "telemetry", tracer_provider=setup_tracing("telemetry"))
    broker, subjects = sb.broker, sb.subjects
    state: dict[str, JobView] = {}
    metrics = JobMetrics(sb.registry, lambda: state["view"].all() if "view" in state else [])

    @broker.subscriber(
        subjects.all_job_events,
        stream=streams(subjects).jobs,
        durable="telemetry-events",
        pull_sub=PullSub(batch_size=256, timeout=0.5),
        config=ConsumerConfig(max_deliver=5, ack_wait=30),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title="telemetry/job-events",
        description="counts events and observes wait and run times",
    )
    async def on_job_event(event: JobEvent) -> None:
        view = state.get("view")
        metrics.observe(event, view.get(event.job_id) if view else None)

    async def connect() -> None:
        await broker.connect()
        await ensure_streams(broker, subjects, common.stream_replicas)
        buckets = await open_buckets(broker, subjects, common.stream_replicas)
        view = JobView(buckets.jobs)
        await view.start()
        state["view"] = view

    async def stop() -> None:
        if "view" in state:
            await state["view"].stop()

    app = build_app(
        sb,
        title="trainyard-telemetry",
        description="Trainyard telemetry: job metrics for Prometheus, catch-up from the stream",
        on_startup=[connect],
        on_shutdown=[stop],
    )
    app.context.set_global("telemetry_metrics", metrics)
    return app
