"""The registry service: succeeded jobs with a model output become MLflow model versions."""

from __future__ import annotations

import time
from dataclasses import dataclass

from faststream.asgi import AsgiFastStream

from trainyard_contracts import JobSucceeded
from trainyard_contracts._time import utcnow
from trainyard_contracts.modelregistry import REGISTRY_KINDS, MlflowModelEvent, RegistryReply
from trainyard_registry.core import RegistryCore
from trainyard_registry.deferred import DeferredModelStore, ModelStore, create_sqlite_store
from trainyard_registry.outputs import OutputLimits
from trainyard_registry.requests import AliasStore, RegistryRequests
from trainyard_registry.settings import RegistrySettings
from trainyard_registry.webhooks import PATH as WEBHOOK_PATH
from trainyard_registry.webhooks import MlflowEvents, WebhookReceiver, webhook_asgi
from trainyard_shared.auditlog import AuditLog
from trainyard_shared.binding import connect_and_bind
from trainyard_shared.broker import ServiceBroker, make_broker
from trainyard_shared.bus import streams
from trainyard_shared.jobstore import JobStore
from trainyard_shared.publishing import MSG_ID, EventPublisher, publish_acked
from trainyard_shared.pullconsumer import batch_consumer
from trainyard_shared.responder import answer_requests
from trainyard_shared.runner import build_app
from trainyard_shared.runtimeslot import RUNTIME, RuntimeSlot
from trainyard_shared.settings import CommonSettings
from trainyard_shared.tracing import setup_tracing


def default_tracking_uri(common: CommonSettings) -> str:
    folder = common.resolved_data_dir() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


ACK_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class RegistryRuntime:
    """What the handler uses, built once the broker has connected."""

    core: RegistryCore
    requests: RegistryRequests
    mlflow_events: MlflowEvents


async def build_runtime(
    sb: ServiceBroker, common: CommonSettings, settings: RegistrySettings
) -> RegistryRuntime:
    buckets = await connect_and_bind(sb, common)
    tracking = settings.tracking_uri or default_tracking_uri(common)
    limits = OutputLimits(
        max_file_bytes=settings.max_output_file_bytes,
        max_total_bytes=settings.max_outputs_bytes,
        max_entries=settings.max_output_entries,
    )
    await create_sqlite_store(tracking)

    def build() -> ModelStore:
        # MLflow is a heavy import: only once a registration or a version question needs it
        from trainyard_registry.mlflow_store import MlflowModelStore

        return MlflowModelStore(tracking, settings.registry_uri, limits)

    mlflow = DeferredModelStore(build)
    core = RegistryCore(
        store=JobStore(buckets.jobs),
        models_kv=buckets.models,
        events=EventPublisher(sb.broker, sb.subjects),
        broker=sb.broker,
        subjects=sb.subjects,
        mlflow=mlflow,
        experiment=settings.experiment,
        executors=buckets.executors,
    )
    aliases, audit = AliasStore(buckets.aliases), AuditLog(sb.broker, sb.subjects, "registry")
    requests = RegistryRequests(aliases, mlflow, JobStore(buckets.jobs), audit, utcnow)

    async def publish(event: MlflowModelEvent) -> None:
        subject = sb.subjects.model_event(event.name, event.event)
        headers = {MSG_ID: f"mlflow:{event.delivery_id}", "content-type": "application/json"}
        payload = event.model_dump_json().encode()
        await publish_acked(sb.broker, subject, payload, headers, sb.subjects.streams.models)

    return RegistryRuntime(core, requests, MlflowEvents(aliases, audit, publish, utcnow))


def create_app(
    common: CommonSettings | None = None, settings: RegistrySettings | None = None
) -> AsgiFastStream:
    common = common or CommonSettings()
    settings = settings or RegistrySettings()
    sb = make_broker(common, "registry", tracer_provider=setup_tracing("registry"))
    subjects = sb.subjects
    slot: RuntimeSlot[RegistryRuntime] = RuntimeSlot("registry")

    # a registration can take longer than ack_wait (MLflow, artifact upload): the batch consumer
    # marks unfinished messages "in progress" meanwhile, and a registry killed mid-way has its
    # event redelivered within ack_wait instead of minutes later
    @batch_consumer(
        sb,
        subjects.job_event_kind("succeeded"),
        stream=streams(subjects).jobs,
        durable="registry-succeeded",
        parse=JobSucceeded.model_validate_json,
        batch=64,
        # off the job path: messages taken in gathered batches, far less CPU per message
        linger=0.1,
        ack_wait=ACK_WAIT_SECONDS,
        title="registry/succeeded",
        description="registers the model version of a succeeded job that declared outputs.model",
    )
    async def on_succeeded(event: JobSucceeded) -> None:
        await slot.get().core.on_succeeded(event)

    for kind in REGISTRY_KINDS:
        _request_handler(sb, kind, slot)

    async def connect() -> None:
        slot.set(await build_runtime(sb, common, settings))

    app = build_app(
        sb,
        title="trainyard-registry",
        description="Trainyard registry: model versions in MLflow with git provenance",
        on_startup=[connect],
    )
    app.context.set_global(RUNTIME, slot)
    if settings.webhook_secret is not None:
        receiver = WebhookReceiver(
            settings.webhook_secret.get_secret_value(),
            settings.webhook_max_age_seconds,
            lambda: slot.get().mlflow_events if slot.started else None,
        )
        app.mount(WEBHOOK_PATH, webhook_asgi(receiver, settings.webhook_max_bytes, time.time))
    return app


def _request_handler(sb: ServiceBroker, kind: str, slot: RuntimeSlot[RegistryRuntime]) -> None:
    async def answer(body: bytes) -> RegistryReply:
        return await slot.get().requests.answer(kind, body)

    answer_requests(
        sb,
        sb.subjects.registry_request(kind),
        "registry",
        f"registry/{kind}",
        f"the API's {kind} request (RegistryRequest) answered with a RegistryReply",
        answer,
    )
