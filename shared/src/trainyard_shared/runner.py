"""Build and run a service's ASGI app: the broker plus /metrics and /healthz."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from faststream.asgi import AsgiFastStream, make_ping_asgi
from prometheus_client import make_asgi_app

from trainyard_shared.broker import ServiceBroker
from trainyard_shared.settings import CommonSettings, HttpSettings

log = logging.getLogger("trainyard.runner")
STARTED = "trainyard_started"


def build_app(
    sb: ServiceBroker,
    *,
    title: str,
    description: str,
    version: str = "0.1.0",
    on_startup: Sequence[Callable[..., Any]] = (),
    after_startup: Sequence[Callable[..., Any]] = (),
    on_shutdown: Sequence[Callable[..., Any]] = (),
) -> AsgiFastStream:
    from faststream.specification import AsyncAPI

    # faststream's lifespan context hands over before the broker has started and the
    # after-startup hooks have run; this event says when they have (STARTED in the app's context)
    started = asyncio.Event()

    async def mark_started() -> None:
        started.set()

    app = AsgiFastStream(
        sb.broker,
        # our root logger (JSON, logs.py), not faststream's own coloured handler: one format per file
        logger=logging.getLogger("trainyard.app"),
        asgi_routes=[
            ("/metrics", make_asgi_app(registry=sb.registry)),
            ("/healthz", make_ping_asgi(sb.broker, timeout=5.0)),
        ],
        specification=AsyncAPI(title=title, description=description, version=version),
        on_startup=on_startup,
        # the batch consumers pull once the service's own start-up has connected and declared
        after_startup=[sb.start_pullers, *after_startup, mark_started],
        on_shutdown=[sb.stop_pullers, *on_shutdown],
    )
    app.context.set_global(STARTED, started)
    return app


def serve(app: AsgiFastStream, http: HttpSettings) -> None:
    """Run until SIGINT/SIGTERM: uvicorn serves /metrics and /healthz, and its ASGI lifespan starts
    and stops the broker and the service's hooks."""
    import uvicorn

    # log_config=None: uvicorn's records go through our JSON root handler, not its coloured one
    uvicorn.run(
        app,
        host=http.host,
        port=http.port,
        lifespan="on",
        log_level="warning",
        access_log=False,
        log_config=None,
    )


def run_service(
    service: str,
    create_app: Callable[[CommonSettings, Any], AsgiFastStream],
    settings_class: type[HttpSettings],
) -> None:
    """The body of every service's ``main()``: settings from the environment, logs, serve."""
    from trainyard_shared.gctune import tune_gc
    from trainyard_shared.logs import setup_logging

    common = CommonSettings()
    settings = settings_class()
    setup_logging(service, common.log_level, common.log_format)
    app = create_app(common, settings)
    tune_gc(common.gc_young_threshold)
    serve(app, settings)
