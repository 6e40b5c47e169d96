"""Imported first by every service's entry: nats-py without its WebSocket transport's aiohttp.

nats-py imports aiohttp (and multidict) when it is first imported, for ``ws://`` / ``wss://``
servers only. A service dials ``nats://`` or ``tls://``; aiohttp cost each of the six service
processes ~10 MB of resident memory it never used (docs/performance.md, "Idle footprint"). This
module imports nats' transport with aiohttp hidden, then un-hides it: a later ``import aiohttp``
(MLflow's, the kubernetes client's) loads it as usual, and only nats-py's WebSocket transport stays
off in this process. A ``ws://`` or ``wss://`` server in ``TRAINYARD_NATS_URL`` keeps it on.
"""

from __future__ import annotations

import os
import sys

WEBSOCKET_SCHEMES = ("ws://", "wss://")


def wants_websockets(nats_url: str) -> bool:
    return any(url.strip().lower().startswith(WEBSOCKET_SCHEMES) for url in nats_url.split(","))


def import_nats_without_websockets() -> bool:
    """Import ``nats.aio.transport`` with aiohttp hidden; False when nothing was spared (nats or
    aiohttp already imported, or a WebSocket server configured)."""
    if "nats.aio.transport" in sys.modules or "aiohttp" in sys.modules:
        return False
    if wants_websockets(os.environ.get("TRAINYARD_NATS_URL", "")):
        return False
    sys.modules["aiohttp"] = None  # type: ignore[assignment]  # Python's "import fails" marker
    try:
        import nats.aio.transport  # noqa: F401
    finally:
        if sys.modules.get("aiohttp", ...) is None:
            del sys.modules["aiohttp"]
    return True


import_nats_without_websockets()
