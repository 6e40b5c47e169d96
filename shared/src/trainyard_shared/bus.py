"""The streams and KV buckets of one installation, declared in one place."""

from __future__ import annotations

from dataclasses import dataclass

from faststream.nats import JStream
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue

from trainyard_contracts import Subjects
from trainyard_shared.streamlimits import StreamLimits

DAY = 86400.0
INTAKE_DUPLICATE_WINDOW = 0.1  # seconds; nats-server refuses less


@dataclass(frozen=True)
class Streams:
    """Bindings for subscribers (``declare=False``): :func:`ensure_streams` owns the configs.

    faststream would otherwise add each subscriber's filter subject to the stream's subjects,
    which overlaps ``<prefix>.job.>`` and makes the server refuse the stream.
    """

    jobs: JStream
    logs: JStream
    exec: JStream
    intake: JStream
    models: JStream
    dlq: JStream
    scheduler: JStream


def streams(subjects: Subjects) -> Streams:
    names = subjects.streams
    return Streams(
        **{field: JStream(getattr(names, field), declare=False) for field in Streams.__dataclass_fields__}
    )


def stream_configs(
    subjects: Subjects, replicas: int = 1, limits: StreamLimits | None = None
) -> list[StreamConfig]:
    """Every stream's config; ``limits``: what they keep (default: from the environment)."""
    names = subjects.streams
    p = subjects.prefix
    limits = limits or StreamLimits()
    common = {"storage": StorageType.FILE, "num_replicas": replicas}
    return [
        StreamConfig(
            name=names.jobs,
            subjects=[subjects.all_job_events],
            description="every job's lifecycle events",
            max_age=limits.jobs_max_age_days * DAY,
            max_bytes=limits.jobs_max_bytes,
            discard=DiscardPolicy.OLD,
            duplicate_window=120.0,
            **common,
        ),
        StreamConfig(
            name=names.logs,
            subjects=[f"{p}.log.>"],
            description="job output, in chunks (limits retention, bounded size)",
            max_age=limits.logs_max_age_days * DAY,
            max_bytes=limits.logs_max_bytes,
            max_msgs_per_subject=limits.logs_max_msgs_per_subject,
            max_msg_size=limits.logs_max_msg_bytes,
            discard=DiscardPolicy.OLD,
            **common,
        ),
        StreamConfig(
            name=names.exec,
            subjects=[f"{p}.exec.>"],
            description="commands to executors",
            retention=RetentionPolicy.WORK_QUEUE,
            max_age=DAY,
            duplicate_window=120.0,
            **common,
        ),
        StreamConfig(
            name=names.intake,
            subjects=[subjects.intake_submit],
            description="job specs submitted over the bus (the submission service dedups on Nats-Msg-Id)",
            retention=RetentionPolicy.WORK_QUEUE,
            max_age=DAY,
            # the service answers a repeated id with its job; the stream would drop the repeat
            # unanswered, so its window is the server's minimum (submission/intake.py)
            duplicate_window=INTAKE_DUPLICATE_WINDOW,
            **common,
        ),
        StreamConfig(
            name=names.models,
            subjects=[f"{p}.model.>"],
            description="model versions registered",
            max_age=365 * DAY,
            duplicate_window=120.0,
            **common,
        ),
        StreamConfig(
            name=names.scheduler,
            subjects=[subjects.scheduler_decisions],
            description="the scheduler leader's decisions, one message per planning pass that decided",
            max_age=DAY,
            max_bytes=256 * 1024**2,
            discard=DiscardPolicy.OLD,
            **common,
        ),
        StreamConfig(
            name=names.dlq,
            subjects=[f"{p}.dlq.>"],
            description="messages a service could not handle, with the reason",
            max_age=limits.dlq_max_age_days * DAY,
            max_bytes=limits.dlq_max_bytes,
            discard=DiscardPolicy.OLD,
            **common,
        ),
    ]


@dataclass(frozen=True)
class Buckets:
    jobs: KeyValue
    executors: KeyValue
    leases: KeyValue
    queues: KeyValue
    idempotency: KeyValue
    models: KeyValue


async def open_buckets(broker: object, subjects: Subjects, replicas: int = 1) -> Buckets:
    """Create (or bind to) every KV bucket; safe to call from every service at start-up."""
    names = subjects.buckets
    kv = broker.key_value  # type: ignore[attr-defined]
    return Buckets(
        jobs=await kv(names.jobs, history=5, storage=StorageType.FILE, replicas=replicas),
        executors=await kv(names.executors, history=1, ttl=3600.0, replicas=replicas),
        leases=await kv(names.leases, history=1, replicas=replicas),
        queues=await kv(names.queues, history=5, replicas=replicas),
        idempotency=await kv(names.idempotency, history=1, ttl=7 * DAY, replicas=replicas),
        models=await kv(names.models, history=1, replicas=replicas),
    )


async def ensure_streams(
    broker: object, subjects: Subjects, replicas: int = 1, limits: StreamLimits | None = None
) -> None:
    """Create or update every stream; call before the broker starts its subscribers."""
    js = broker.config.connection_state.stream  # type: ignore[attr-defined]
    for config in stream_configs(subjects, replicas, limits):
        try:
            await js.add_stream(config=config)
        except BadRequestError:  # exists with another config: bring it to ours
            await js.update_stream(config=config)
