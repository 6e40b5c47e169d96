"""Build and run a service's ASGI app: the broker plus /metrics and /healthz; or several services'
apps in one process (:func:`run_services`, the embedded stack's co-hosting)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from faststream.asgi import AsgiFastStream, make_ping_asgi
from prometheus_client import make_asgi_app

from trainyard_shared.broker import ServiceBroker
from trainyard_shared.settings import CommonSettings, HttpSettings

log = logging.getLogger("trainyard.runner")
STARTED = "trainyard_started"
# log_config=None: uvicorn's records go through our JSON root handler, not its coloured one
UVICORN_OPTIONS: dict[str, Any] = {
    "lifespan": "on",
    "log_level": "warning",
    "access_log": False,
    "log_config": None,
}


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

    uvicorn.run(app, host=http.host, port=http.port, **UVICORN_OPTIONS)


@dataclass(frozen=True)
class ServiceEntry:
    """What runs a service: its name, its app factory and its settings (each ``__main__``'s ``ENTRY``)."""

    name: str
    create_app: Callable[[CommonSettings, Any], AsgiFastStream]
    settings_class: type[HttpSettings]


def run_service(entry: ServiceEntry) -> None:
    """The body of every service's ``main()``: settings from the environment, logs, serve."""
    from trainyard_shared.gctune import tune_gc
    from trainyard_shared.logs import setup_logging

    common = CommonSettings()
    settings = entry.settings_class()
    setup_logging(entry.name, common.log_level, common.log_format)
    app = entry.create_app(common, settings)
    tune_gc(common.gc_young_threshold)
    serve(app, settings)


def nats_identity(service: str, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``service``'s own NATS user and password in a process that hosts several services
    (``TRAINYARD_<SERVICE>_NATS_USER`` / ``_PASSWORD``; :class:`CommonSettings` keywords), or none."""
    prefix = f"TRAINYARD_{service.upper()}_NATS_"
    user, password = environ.get(prefix + "USER"), environ.get(prefix + "PASSWORD")
    return {"nats_user": user, "nats_password": password} if user and password else {}


def run_services(entries: Sequence[ServiceEntry]) -> None:
    """Several services in one process, one event loop: each with its own settings, NATS user
    (:func:`nats_identity`), broker, metrics registry, app and port, as if it ran alone. SIGINT or
    SIGTERM stops them side by side; one that cannot start stops the others (exit 3). What they
    share: the interpreter and its imports (the memory this saves), the log stream (the service
    field names them all; each record's logger says whose), and a crash."""
    from trainyard_shared.gctune import tune_gc
    from trainyard_shared.logs import setup_logging

    base = CommonSettings()
    setup_logging("+".join(entry.name for entry in entries), base.log_level, base.log_format)
    apps = []
    for entry in entries:
        settings = entry.settings_class()
        common = CommonSettings(**nats_identity(entry.name))  # type: ignore[arg-type]
        apps.append((entry.create_app(common, settings), settings))
    tune_gc(base.gc_young_threshold)
    if not asyncio.run(_serve_together(apps)):
        raise SystemExit(3)  # uvicorn's own code for a start-up that failed


class _ServedTogether:
    """uvicorn servers in one loop. Each would install its own signal handlers and stop alone (and
    re-raise the signal at its end); here one handler stops them all at once."""

    def __init__(self, apps: Sequence[tuple[AsgiFastStream, HttpSettings]]) -> None:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        configs = [uvicorn.Config(app, host=h.host, port=h.port, **UVICORN_OPTIONS) for app, h in apps]
        self.servers = [Server(config) for config in configs]

    def stop(self, signum: int = signal.SIGTERM, frame: object = None) -> None:
        for server in self.servers:
            if server.should_exit and signum == signal.SIGINT:
                server.force_exit = True  # a second Ctrl-C, as uvicorn does
            server.should_exit = True


async def _serve_together(apps: Sequence[tuple[AsgiFastStream, HttpSettings]]) -> bool:
    """Serve until a signal, or until one server ends (its start failed); True if all started."""
    together = _ServedTogether(apps)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, together.stop)
    tasks = [asyncio.create_task(server.serve()) for server in together.servers]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    together.stop()
    await asyncio.gather(*tasks, return_exceptions=True)
    return all(server.started for server in together.servers)
