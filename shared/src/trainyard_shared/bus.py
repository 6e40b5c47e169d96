"""The streams, KV buckets and Object Store buckets of one installation, declared in one place."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from faststream.nats import JStream, NatsBroker
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue

from trainyard_contracts import Subjects
from trainyard_contracts.audit import MAX_AUDIT_ENTRY_BYTES
from trainyard_contracts.specsize import MAX_SPEC_BYTES
from trainyard_shared.natshandle import NatsHandle
from trainyard_shared.natsusers import tokens_bucket
from trainyard_shared.streamlimits import StreamLimits

DAY = 86400.0
JOB_SECRETS_TTL_DAYS = 90
# the step cache (the workflow service's, docs/workflows.md "Step caching"): a cache, so bounded
# by entries and bytes with the oldest entries out first, and each entry kept 30 days
STEP_CACHE_TTL_DAYS = 30
STEP_CACHE_MAX_ENTRIES = 100_000
STEP_CACHE_MAX_BYTES = 256 * 1024 * 1024
STEP_CACHE_MAX_VALUE_BYTES = 256 * 1024
AUDIT_MAX_AGE_DAYS = 400  # a year and a month: a yearly review still finds last year's entries
AUDIT_MAX_BYTES = 1024**3
INTAKE_DUPLICATE_WINDOW = 0.1  # seconds; nats-server refuses less
REPORTS_MAX_BYTES = 256 * 1024**2
# a report's free text is clipped far below (contracts/reports.py); an end carries the job's
# outputs.json too, up to 64 KiB (contracts/stepoutputs.py)
REPORT_MAX_MSG_BYTES = 128 * 1024
# an index entry: ids, name and labels, which the spec's own bound holds
JOB_INDEX_MAX_MSG_BYTES = MAX_SPEC_BYTES + 4096


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
    pipelines: JStream
    metrics: JStream
    audit: JStream
    reports: JStream
    triggers: JStream


def streams(subjects: Subjects) -> Streams:
    names = subjects.streams
    return Streams(
        **{field: JStream(getattr(names, field), declare=False) for field in Streams.__dataclass_fields__}
    )


def stream_configs(
    subjects: Subjects,
    replicas: int = 1,
    limits: StreamLimits | None = None,
    trigger_subjects: Sequence[str] = (),
) -> list[StreamConfig]:
    """Every stream's config; ``limits``: what they keep (default: from the environment);
    ``trigger_subjects``: other systems' subjects the triggers stream stores (CommonSettings)."""
    limits = limits or StreamLimits()
    common: dict[str, Any] = {"storage": StorageType.FILE, "num_replicas": replicas}
    return [
        *_job_path_streams(subjects, limits, common),
        *_record_streams(subjects, limits, common),
        trigger_stream(subjects, trigger_subjects, common),
    ]


TRIGGER_EVENTS_MAX_BYTES = 256 * 1024**2
TRIGGER_EVENT_MAX_MSG_BYTES = 1024**2  # what the stream stores; a trigger reads at most 64 KiB


def trigger_stream(subjects: Subjects, foreign: Sequence[str], common: dict[str, Any]) -> StreamConfig:
    """Events triggers may follow: ``<prefix>.trigger.>`` and the operator's allow-list of other
    systems' subjects (a plain publish to them is stored here, so the workflow service reads them
    durably). Bounded: a week, 256 MiB, oldest dropped first."""
    return StreamConfig(
        name=subjects.streams.triggers,
        subjects=[subjects.trigger_events, *foreign],
        description="events triggers may follow: <prefix>.trigger.> and the allowed foreign subjects",
        max_age=7 * DAY,
        max_bytes=TRIGGER_EVENTS_MAX_BYTES,
        max_msg_size=TRIGGER_EVENT_MAX_MSG_BYTES,
        discard=DiscardPolicy.OLD,
        duplicate_window=120.0,
        **common,
    )


def _job_path_streams(subjects: Subjects, limits: StreamLimits, common: dict[str, Any]) -> list[StreamConfig]:
    """What a job's way through the services uses: its events, its output, commands, intake."""
    names = subjects.streams
    p = subjects.prefix
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
            name=names.metrics,
            subjects=[subjects.metrics_of()],
            description="training metrics jobs report (trainyard.report), in batches per attempt",
            max_age=limits.metrics_max_age_days * DAY,
            max_bytes=limits.metrics_max_bytes,
            max_msgs_per_subject=limits.metrics_max_msgs_per_subject,
            max_msg_size=limits.metrics_max_msg_bytes,
            discard=DiscardPolicy.OLD,
            duplicate_window=120.0,
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
            subjects=[subjects.intake_submit, subjects.intake_workflow],
            description="job specs submitted over the bus (the submission service dedups on Nats-Msg-Id)",
            retention=RetentionPolicy.WORK_QUEUE,
            max_age=DAY,
            # the service answers a repeated id with its job; the stream would drop the repeat
            # unanswered, so its window is the server's minimum (submission/intake.py)
            duplicate_window=INTAKE_DUPLICATE_WINDOW,
            **common,
        ),
        StreamConfig(
            name=names.reports,
            subjects=[subjects.all_exec_reports],
            description="what executors report about their attempts; the scheduler writes the records",
            retention=RetentionPolicy.WORK_QUEUE,
            max_age=DAY,
            max_bytes=REPORTS_MAX_BYTES,
            max_msg_size=REPORT_MAX_MSG_BYTES,
            # a report waits for the scheduler; a full stream refuses new ones (the executor
            # tries again) rather than dropping ones not applied yet
            discard=DiscardPolicy.NEW,
            duplicate_window=120.0,
            **common,
        ),
    ]


def _record_streams(subjects: Subjects, limits: StreamLimits, common: dict[str, Any]) -> list[StreamConfig]:
    """What is kept for the record: models, the scheduler's decisions, pipelines, dead letters."""
    names = subjects.streams
    p = subjects.prefix
    return [
        StreamConfig(
            name=names.models,
            subjects=[subjects.all_model_events],
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
            name=names.pipelines,
            subjects=[subjects.pipeline_events()],
            description="pipeline runs' events (the workflow service)",
            max_age=limits.jobs_max_age_days * DAY,
            max_bytes=limits.jobs_max_bytes,
            discard=DiscardPolicy.OLD,
            duplicate_window=120.0,
            **common,
        ),
        StreamConfig(
            name=names.audit,
            subjects=[subjects.audit_of()],
            description="who changed what (promotions, rollbacks): append-only, no delete, no purge",
            max_age=AUDIT_MAX_AGE_DAYS * DAY,
            max_bytes=AUDIT_MAX_BYTES,
            max_msg_size=MAX_AUDIT_ENTRY_BYTES,
            discard=DiscardPolicy.OLD,
            duplicate_window=120.0,
            # nobody, the operator included, removes an entry: only the age and size limits end one
            deny_delete=True,
            deny_purge=True,
            **common,
        ),
        StreamConfig(
            name=names.jobindex,
            subjects=[subjects.job_index],
            description="the jobs index: one entry per job in its current queue and state "
            "(trainyard_shared.jobindex), written before each record change, read by the job lists",
            max_msgs_per_subject=1,
            max_msg_size=JOB_INDEX_MAX_MSG_BYTES,
            # as many entries as records (the bucket keeps every job): full, the entries stored
            # first go (old jobs leave the lists) rather than a state change being refused
            max_bytes=limits.job_index_max_bytes,
            discard=DiscardPolicy.OLD,
            allow_direct=True,
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


def bucket_configs(subjects: Subjects, replicas: int = 1) -> list[KeyValueConfig]:
    """Every KV bucket, the submission's tokens included; declared by the provision step."""
    names = subjects.buckets
    return [
        KeyValueConfig(bucket=names.jobs, history=5, storage=StorageType.FILE, replicas=replicas),
        KeyValueConfig(bucket=names.executors, history=1, ttl=3600.0, replicas=replicas),
        KeyValueConfig(bucket=names.leases, history=1, replicas=replicas),
        KeyValueConfig(bucket=names.queues, history=5, replicas=replicas),
        KeyValueConfig(bucket=names.idempotency, history=1, ttl=7 * DAY, replicas=replicas),
        KeyValueConfig(bucket=names.models, history=1, replicas=replicas),
        # pipeline runs (the workflow service's records); compare-and-set on every change
        KeyValueConfig(bucket=names.pipelines, history=5, storage=StorageType.FILE, replicas=replicas),
        # schedules (the workflow service's): the last tick each handled moves by compare-and-set
        KeyValueConfig(bucket=names.schedules, history=5, storage=StorageType.FILE, replicas=replicas),
        # triggers (the workflow service's): the events each looked at move by compare-and-set
        KeyValueConfig(bucket=names.triggers, history=5, storage=StorageType.FILE, replicas=replicas),
        # sweeps (the workflow service's): the record is the study's journal, compare-and-set
        KeyValueConfig(bucket=names.sweeps, history=5, storage=StorageType.FILE, replicas=replicas),
        # the step cache (the workflow service's): rendered step spec + inputs -> the jobs that ran
        KeyValueConfig(
            bucket=names.step_cache,
            history=1,
            ttl=STEP_CACHE_TTL_DAYS * DAY,
            max_bytes=STEP_CACHE_MAX_BYTES,
            max_value_size=STEP_CACHE_MAX_VALUE_BYTES,
            storage=StorageType.FILE,
            replicas=replicas,
        ),
        KeyValueConfig(bucket=tokens_bucket(subjects), history=1, replicas=replicas),
        # model aliases (the registry's): holder and previous holders per alias, compare-and-set
        KeyValueConfig(bucket=names.aliases, history=5, storage=StorageType.FILE, replicas=replicas),
        # a job's secret values (jobsecrets.py): one revision, removed when the job ends; the
        # TTL only clears what a missed end left behind (longer than any job's queueing and run)
        KeyValueConfig(
            bucket=names.secrets,
            history=1,
            ttl=JOB_SECRETS_TTL_DAYS * DAY,
            storage=StorageType.FILE,
            replicas=replicas,
        ),
    ]


def object_store_configs(
    subjects: Subjects, replicas: int = 1, limits: StreamLimits | None = None
) -> list[StreamConfig]:
    """Every Object Store bucket, as the stream nats-py's ``create_object_store`` declares
    (nats/js/client.py), so the provision step can also bring a changed one back to it."""
    limits = limits or StreamLimits()
    return [
        object_store_stream(
            subjects.workdirs_bucket,
            "packed job workdirs, named by their sha256 digest (trainyard_shared.blobs)",
            max_bytes=limits.workdirs_max_bytes,
            max_age=limits.workdirs_max_age_days * DAY,
            replicas=replicas,
        ),
        object_store_stream(
            subjects.step_outputs_bucket,
            "pipeline steps' packed outputs folders, named by their sha256 digest ($TRAINYARD_INPUTS)",
            max_bytes=limits.step_outputs_max_bytes,
            max_age=limits.step_outputs_max_age_days * DAY,
            replicas=replicas,
        ),
    ]


def object_store_stream(
    bucket: str, description: str, *, max_bytes: int, max_age: float, replicas: int
) -> StreamConfig:
    return StreamConfig(
        name=f"OBJ_{bucket}",
        description=description,
        subjects=[f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"],
        max_age=max_age,
        max_bytes=max_bytes,
        max_consumers=-1,
        storage=StorageType.FILE,
        num_replicas=replicas,
        discard=DiscardPolicy.NEW,
        allow_rollup_hdrs=True,
        allow_direct=True,
    )


def kv_stream_config(config: KeyValueConfig) -> StreamConfig:
    """The stream nats-py's ``create_key_value`` declares for ``config`` (nats/js/client.py), so
    that the provision step can also bring a bucket whose stream was changed back to it
    (``create_key_value`` only creates, and fails on a stream with another config)."""
    duplicate_window = min(120.0, config.ttl) if config.ttl else 120.0
    return StreamConfig(
        name=f"KV_{config.bucket}",
        description=config.description,
        subjects=[f"$KV.{config.bucket}.>"],
        allow_direct=config.direct,
        allow_rollup_hdrs=True,
        allow_msg_ttl=True,
        deny_delete=True,
        discard=DiscardPolicy.NEW,
        duplicate_window=duplicate_window,
        max_age=config.ttl,
        max_bytes=config.max_bytes,
        max_consumers=-1,
        max_msg_size=config.max_value_size,
        max_msgs=-1,
        max_msgs_per_subject=config.history,
        num_replicas=config.replicas,
        storage=config.storage,
        republish=config.republish,
    )


def bucket_stream_configs(subjects: Subjects, replicas: int = 1) -> list[StreamConfig]:
    """The streams of every KV bucket: as nats-py declares them, and the step cache's as a cache
    (at most STEP_CACHE_MAX_ENTRIES entries; full, the oldest go rather than a write refused)."""
    out = []
    for config in bucket_configs(subjects, replicas):
        stream = kv_stream_config(config)
        if config.bucket == subjects.buckets.step_cache:
            stream.discard, stream.max_msgs = DiscardPolicy.OLD, STEP_CACHE_MAX_ENTRIES
        out.append(stream)
    return out


def all_stream_configs(
    subjects: Subjects,
    replicas: int = 1,
    limits: StreamLimits | None = None,
    trigger_subjects: Sequence[str] = (),
) -> list[StreamConfig]:
    """Every stream of the installation, the buckets' streams included."""
    buckets = bucket_stream_configs(subjects, replicas)
    objects = object_store_configs(subjects, replicas, limits)
    return [*stream_configs(subjects, replicas, limits, trigger_subjects), *buckets, *objects]


async def declare(js: JetStreamContext, configs: list[StreamConfig]) -> None:
    """Create each stream, or bring an existing one to its config (the operator's step only)."""
    for config in configs:
        try:
            await js.add_stream(config=config)
        except BadRequestError:  # exists with another config: bring it to ours
            await js.update_stream(config=config)


@dataclass(frozen=True)
class Buckets:
    jobs: KeyValue
    executors: KeyValue
    leases: KeyValue
    queues: KeyValue
    idempotency: KeyValue
    models: KeyValue
    secrets: KeyValue
    pipelines: KeyValue
    schedules: KeyValue
    aliases: KeyValue
    triggers: KeyValue
    sweeps: KeyValue
    step_cache: KeyValue


async def open_buckets(
    broker: NatsBroker, subjects: Subjects, replicas: int = 1, *, declare_them: bool = True
) -> Buckets:
    """Bind to every KV bucket; with ``declare_them`` create (or correct) them first, which only
    the operator identity may do on a server with users (trainyard_shared.provision)."""
    if declare_them:
        js = NatsHandle(broker).jetstream
        await declare(js, bucket_stream_configs(subjects, replicas))
    names = subjects.buckets
    kv = broker.key_value
    return Buckets(
        **{name: await kv(getattr(names, name), declare=False) for name in Buckets.__dataclass_fields__}
    )


async def ensure_streams(
    broker: NatsBroker,
    subjects: Subjects,
    replicas: int = 1,
    limits: StreamLimits | None = None,
    trigger_subjects: Sequence[str] = (),
) -> None:
    """Create or update every stream and Object Store bucket (not the KV buckets): the operator's
    step, and tests'."""
    js = NatsHandle(broker).jetstream
    streams = stream_configs(subjects, replicas, limits, trigger_subjects)
    await declare(js, [*streams, *object_store_configs(subjects, replicas, limits)])
