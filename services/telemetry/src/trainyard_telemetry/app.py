"""The telemetry service: every job event into Prometheus metrics, and the latest values running jobs
report (``trainyard.report``); nothing on the job path.

Its consumer is durable, so after a restart it catches up from where it stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from faststream.asgi import AsgiFastStream
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import ValidationError

from trainyard_contracts import JobEvent, LogChunk, MetricsBatch, parse_job_event
from trainyard_contracts.states import TERMINAL_STATES
from trainyard_shared.binding import connect_and_bind
from trainyard_shared.broker import ServiceBroker, make_broker
from trainyard_shared.bus import streams
from trainyard_shared.jobindex import JobIndex
from trainyard_shared.kvwatch import KvWatch
from trainyard_shared.liveread import read_live
from trainyard_shared.natshandle import NatsHandle
from trainyard_shared.pullconsumer import batch_consumer
from trainyard_shared.queueview import QueueView
from trainyard_shared.runner import build_app
from trainyard_shared.settings import CommonSettings
from trainyard_shared.tracing import setup_tracing
from trainyard_telemetry.joblogs import JobContext, JobOutputShipper, logstash_handler
from trainyard_telemetry.jobstates import JobStates, RecordFacts
from trainyard_telemetry.metrics import JobMetrics
from trainyard_telemetry.settings import TelemetrySettings

log = logging.getLogger("trainyard.telemetry")


def create_app(
    common: CommonSettings | None = None, settings: TelemetrySettings | None = None
) -> AsgiFastStream:
    common = common or CommonSettings()
    settings = settings or TelemetrySettings()
    sb = make_broker(common, "telemetry", tracer_provider=setup_tracing("telemetry"))
    subjects = sb.subjects
    metrics = JobMetrics(sb.registry, live=settings.live_limits())

    # five events per job: counting one is cheap, faststream's per-message chain was not
    @batch_consumer(
        sb,
        subjects.all_job_events,
        stream=streams(subjects).jobs,
        durable="telemetry-events",
        parse=parse_job_event,
        batch=256,
        # off the job path: messages taken in gathered batches, far less CPU per message
        linger=0.1,
        title="telemetry/job-events",
        description="counts events and observes wait and run times",
    )
    async def on_job_event(event: JobEvent) -> None:
        metrics.observe(event)

    # what running jobs report (trainyard.report): the latest value per job and name, live.py
    @batch_consumer(
        sb,
        subjects.metrics_of(),
        stream=streams(subjects).metrics,
        durable="telemetry-metrics",
        parse=MetricsBatch.model_validate_json,
        batch=256,
        linger=0.1,
        title="telemetry/job-metrics",
        description="the latest value of each metric a running job reports, as Prometheus gauges",
    )
    async def on_metrics(batch: MetricsBatch) -> None:
        metrics.live.observe(batch)

    shipper = _job_output_consumer(sb, settings, metrics)

    queues: list[QueueView] = []

    async def connect() -> None:
        buckets = await connect_and_bind(sb, common)
        # the live jobs' records and the finished ones' counts, then the events keep the facts
        # current (jobstates.py); with no built index, one ordered read of every record
        handle = NatsHandle(sb.broker)
        index = JobIndex(handle.client, handle.jetstream, sb.subjects)
        if not await start_from_index(buckets.jobs, index, metrics.states):
            watch = job_states_watch(buckets.jobs, metrics.states)
            await watch.start()
            await watch.stop()
        queues.append(await _watch_queues(buckets.queues, metrics))

    async def stop_watching() -> None:
        for queue_view in queues:
            await queue_view.stop()

    async def start_shipping() -> None:
        if shipper is not None:
            shipper.start()

    async def stop_shipping() -> None:
        if shipper is not None:
            await asyncio.to_thread(shipper.stop)

    app = build_app(
        sb,
        title="trainyard-telemetry",
        description="Trainyard telemetry: job metrics for Prometheus, catch-up from the stream",
        on_startup=[start_shipping, connect],
        on_shutdown=[stop_shipping, stop_watching],
    )
    app.context.set_global("telemetry_metrics", metrics)
    app.context.set_global("telemetry_job_output", shipper)
    return app


async def start_from_index(kv: KeyValue, index: JobIndex, states: JobStates) -> bool:
    """The start-up read from the jobs index (liveread.py): the facts of the live jobs, and how
    many jobs each finished state holds, counted by the server from the index's entries, taken
    before the live jobs are read (a job finishing in between is counted once, by its event).
    False: no built index (the caller reads every record). What a count gives up against the facts:
    a stale entry (a compare-and-set that lost, rare) counts, and a job's finished event delivered
    again after the restart (one not acknowledged before the stop) counts it a second time."""
    if not await index.built():
        return False
    finished = Counter({state.value: (await index.count(None, state.value))[0] for state in TERMINAL_STATES})
    live = await read_live(kv, index)
    if live is None:
        return False
    take = _facts_taker(states, live_only=True)
    for entry in live.entries:
        take(entry)
    states.finished_before = finished
    return True


def _facts_taker(states: JobStates, live_only: bool) -> Callable[[KeyValue.Entry], None]:
    """Each record's facts into ``states`` (``live_only``: not a finished one's, which the index's
    counts hold: a stale live entry whose record says it finished)."""

    def take(entry: KeyValue.Entry) -> None:
        if entry.operation in (KV_DEL, KV_PURGE):
            return
        try:
            facts = RecordFacts.model_validate_json(entry.value or b"")
        except ValidationError as exc:
            log.error("unreadable job record", extra={"job_id": entry.key, "error": str(exc)[:500]})
            return
        if not (live_only and facts.state.terminal):
            states.seed((facts,))

    return take


def job_states_watch(kv: KeyValue, states: JobStates) -> KvWatch:
    """The start-up read of the jobs bucket when the index is not built: each record's facts
    (``RecordFacts``, not the whole record) are taken as it is read, and nothing else is kept. A
    view of whole records kept every one before (~8.5 KB each: 65 -> 281 MB at 25,000 records)."""
    return KvWatch(kv, _facts_taker(states, live_only=False), "telemetry-jobs")


def _job_output_consumer(
    sb: ServiceBroker, settings: TelemetrySettings, metrics: JobMetrics
) -> JobOutputShipper | None:
    """Job output lines to Logstash (joblogs.py), when turned on: handed to a bounded queue,
    never waited for. None when off (no consumer is declared)."""
    if not settings.job_output_to_logstash:
        return None
    subjects = sb.subjects
    host, port = settings.logstash_address()
    shipper = JobOutputShipper(
        lambda: logstash_handler(host, port), sb.registry, settings.job_output_limits()
    )

    @batch_consumer(
        sb,
        subjects.logs_of("*"),
        stream=streams(subjects).logs,
        durable="telemetry-logs",
        parse=LogChunk.model_validate_json,
        batch=256,
        linger=0.1,
        deliver_new=True,  # turned on: from then on, not the stream's whole history at once
        title="telemetry/job-output",
        description="job output lines to Logstash with ECS fields, when turned on",
    )
    async def on_log_chunk(chunk: LogChunk) -> None:
        facts = metrics.states.get(chunk.job_id)
        job = JobContext(queue=facts.queue, gang=facts.gang) if facts is not None else JobContext()
        shipper.offer(chunk, job)

    return shipper


async def _watch_queues(kv: KeyValue, metrics: JobMetrics) -> QueueView:
    """The queue configurations, watched: a queue's ``metric_names`` narrow which names its
    running jobs show (live.py), from the next scrape after a change."""
    view = QueueView(kv)
    await view.start()
    metrics.live.queue_patterns = lambda name: c.metric_names if (c := view.get(name)) else None
    return view
