"""The submission service: a FastAPI app whose lifespan runs the NATS broker and the bus intake."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from faststream import FastStream
from faststream.specification import AsyncAPI
from nats.aio.msg import Msg
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from trainyard_shared.broker import ServiceBroker, make_broker
from trainyard_shared.bus import streams
from trainyard_shared.pullconsumer import batch_consumer
from trainyard_shared.runtimeslot import RuntimeSlot
from trainyard_shared.settings import CommonSettings
from trainyard_shared.tracing import setup_tracing, tracing_enabled
from trainyard_submission.adminroutes import build_admin_router
from trainyard_submission.api import build_router, install_error_handlers, install_openapi
from trainyard_submission.arrayroutes import build_array_router, submit_array
from trainyard_submission.intake import handle_intake
from trainyard_submission.limits import BodyLimit
from trainyard_submission.modelroutes import build_model_router
from trainyard_submission.pipelines import build_pipeline_router
from trainyard_submission.runtime import SubmissionRuntime, build_runtime
from trainyard_submission.schedules import build_schedule_router
from trainyard_submission.settings import SubmissionSettings
from trainyard_submission.sweeps import build_sweep_router
from trainyard_submission.triggers import build_trigger_router
from trainyard_submission.ui import install_ui, start_queue_sampler


def build_broker(common: CommonSettings, slot: RuntimeSlot[SubmissionRuntime]) -> ServiceBroker:
    sb = make_broker(common, "submission", tracer_provider=setup_tracing("submission"))

    # the body is a spec for parse_spec (a bad one is answered with a rejection, not dead-lettered);
    # submissions are independent, so a batch of them is admitted side by side
    @batch_consumer(
        sb,
        sb.subjects.intake_submit,
        stream=streams(sb.subjects).intake,
        durable="submission-intake",
        # other systems' subject, and the workflow service's own (its keys apart: intake.py)
        filter_subjects=[sb.subjects.intake_submit, sb.subjects.intake_workflow],
        parse=bytes,
        batch=128,
        concurrency=64,
        ack_wait=60,
        with_message=True,
        title="submission/intake",
        description="a job spec (YAML or JSON) from another system (the workflow service on its own "
        "subject); answers IntakeReply on the "
        "subject in the Trainyard-Reply-To header",
    )
    async def intake(body: bytes, msg: Msg) -> None:
        runtime = slot.get()
        from_workflow = msg.subject == sb.subjects.intake_workflow
        await handle_intake(
            runtime.service, sb.broker, body, dict(msg.headers or {}), runtime.tokens, from_workflow
        )

    return sb


def build_asyncapi() -> dict[str, Any]:
    sb = build_broker(CommonSettings(), RuntimeSlot("submission"))
    app = FastStream(
        sb.broker,
        specification=AsyncAPI(
            title="trainyard-submission",
            description="Trainyard submission: bus intake of job specs",
            version="0.1.0",
        ),
    )
    return app.schema.to_specification().to_jsonable()  # type: ignore[no-any-return]


def create_app(common: CommonSettings | None = None, settings: SubmissionSettings | None = None) -> FastAPI:
    common = common or CommonSettings()
    settings = settings or SubmissionSettings()
    slot: RuntimeSlot[SubmissionRuntime] = RuntimeSlot("submission")
    sb = build_broker(common, slot)
    # what api.build_router reads: the settings now, the runtime's parts once it is built
    state: dict[str, Any] = {"settings": settings, "subjects": common.subjects, "broker": sb.broker}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime = await build_runtime(sb, common, settings)
        slot.set(runtime)
        state.update(runtime.router_state())
        await sb.broker.start()
        await sb.start_pullers()
        sampler = start_queue_sampler(state, runtime, settings)  # the web UI's queue chart
        try:
            yield
        finally:
            await sampler.stop()
            await sb.stop_pullers()
            await sb.broker.stop()
            await runtime.stop()

    # FastAPIOffline: /docs and /redoc served with their assets from this service, not a CDN
    # (an offline or locked-down network otherwise gets a blank page)
    app = FastAPIOffline(
        title="Trainyard",
        version="0.1.0",
        description="Submit, follow and cancel training jobs; read registered models.",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry: request spans only when spans are exported (see tracing.py);
        # metrics are Prometheus' (/metrics) and logs go through our logging set-up
        telemetry={"tracing": tracing_enabled(), "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    app.include_router(build_router(state))
    app.include_router(build_admin_router(state))
    app.include_router(build_pipeline_router(state))
    app.include_router(build_schedule_router(state))
    app.include_router(build_trigger_router(state))
    app.include_router(build_sweep_router(state))
    app.include_router(build_array_router(state))
    app.include_router(build_model_router(state))
    state["submit_array"] = functools.partial(submit_array, state)
    install_ui(app, state)  # the web UI under /ui (docs/ui.md)
    install_openapi(app)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        # a route, not a mount: a mount answers /metrics with a 307 to /metrics/ and an empty body
        return Response(generate_latest(sb.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        # healthy means able to serve: a submission needs the broker, so ask it (as the other
        # services' /healthz do); a probe then stops sending requests while NATS is gone
        try:
            alive = await sb.broker.ping(timeout=5.0)
        except Exception:
            alive = False
        if alive:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unavailable", "detail": "no answer from NATS"}, status_code=503)

    app.state.trainyard = state
    app.state.runtime = slot
    return app
