"""The submission service's composition root: what its routes and intake use, built once at start-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext

from trainyard_shared.auditlog import AuditLog
from trainyard_shared.binding import connect_and_bind
from trainyard_shared.broker import ServiceBroker
from trainyard_shared.executors import ExecutorDirectory
from trainyard_shared.jobindex import JobIndex
from trainyard_shared.jobsecrets import SecretStore
from trainyard_shared.jobstore import JobStore
from trainyard_shared.natshandle import NatsHandle
from trainyard_shared.publishing import EventPublisher
from trainyard_shared.queueview import QueueView
from trainyard_shared.settings import CommonSettings
from trainyard_submission.auth import load_or_create_token
from trainyard_submission.joblist import BucketReader
from trainyard_submission.purge import JobPurger
from trainyard_submission.queuestore import QueueStore
from trainyard_submission.service import SubmissionService
from trainyard_submission.settings import SubmissionSettings
from trainyard_submission.tokens import TokenStore, bucket_name
from trainyard_submission.workdirs import WorkdirStore

log = logging.getLogger("trainyard.submission")


@dataclass
class SubmissionRuntime:
    service: SubmissionService
    tokens: TokenStore
    queues: QueueStore
    queue_view: QueueView
    workdirs: WorkdirStore
    purger: JobPurger
    js: JetStreamContext
    executors_reader: BucketReader  # GET /v1/executors (executorlist.py)
    audit: AuditLog  # the changes made through the API (cancel, purge, queues, tokens)

    def router_state(self) -> dict[str, Any]:
        """What ``api.build_router`` reads, under the names it reads them by."""
        return {
            "service": self.service,
            "tokens": self.tokens,
            "queues": self.queues,
            "workdirs": self.workdirs,
            "purger": self.purger,
            "js": self.js,
            "executors_reader": self.executors_reader,
            "audit": self.audit,
        }

    async def stop(self) -> None:
        await self.queue_view.stop()
        if self.service.executors is not None:
            await self.service.executors.stop()


async def build_runtime(
    sb: ServiceBroker, common: CommonSettings, settings: SubmissionSettings
) -> SubmissionRuntime:
    configured = settings.token.get_secret_value() if settings.token else None
    bootstrap = load_or_create_token(common.resolved_data_dir(), configured)
    buckets = await connect_and_bind(sb, common)  # the tokens bucket too (bus.bucket_configs)
    js = NatsHandle(sb.broker).jetstream
    names = sb.subjects.buckets
    tokens_kv = await sb.broker.key_value(bucket_name(sb.subjects.prefix), declare=False)
    tokens = TokenStore(tokens_kv, bootstrap, BucketReader(js, bucket_name(sb.subjects.prefix)))
    queue_view = QueueView(buckets.queues)
    await queue_view.start()
    executor_directory = ExecutorDirectory(buckets.executors)
    await executor_directory.start()
    queues = QueueStore(buckets.queues, queue_view, BucketReader(js, names.queues))
    workdirs = WorkdirStore(
        js,
        sb.subjects.workdirs_bucket,
        settings.workdir_limits,
    )
    secrets = SecretStore(buckets.secrets)
    purger = JobPurger(buckets.jobs, secrets, buckets.idempotency, js, sb.subjects)
    handle = NatsHandle(sb.broker)
    index = JobIndex(handle.client, js, sb.subjects, settings.index_clock_skew_seconds)
    service = SubmissionService(
        # no view of the jobs bucket: listing reads the jobs index (jobindex.py), which every
        # record writer keeps, so the job path costs this service no watch delivery per update
        store=JobStore(buckets.jobs, index=index),
        index=index,
        jobs_reader=BucketReader(js, names.jobs),
        idempotency=buckets.idempotency,
        models=buckets.models,
        events=EventPublisher(sb.broker, sb.subjects),
        git_timeout=settings.git_timeout_seconds,
        secrets=secrets,
        queues=queues,
        models_reader=BucketReader(js, names.models),
        workdirs=workdirs,
        executors=executor_directory,
        admission_key=common.admission_key_bytes,
    )
    built = await index.ensure_built(service.all_records)
    if built is not None:
        log.info("jobs index built from the records", extra={"records": built})
    executors = BucketReader(js, names.executors)
    audit = AuditLog(sb.broker, sb.subjects, "submission")
    return SubmissionRuntime(service, tokens, queues, queue_view, workdirs, purger, js, executors, audit)
