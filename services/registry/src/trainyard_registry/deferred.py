"""The MLflow model store, built when the registry first needs it.

Importing MLflow costs the registry ~150 MB of resident memory and seconds of CPU; an idle
registry (most of a laptop stack's life) needs neither. So the service starts without it: the
store is built on the first registration or version question, in the worker thread that asks.

One thing cannot wait: a new SQLite store must be created by us before a job's own
``mlflow.start_run()`` creates it (whoever creates it fixes the Default experiment's artifact
location, see :meth:`MlflowModelStore._init_sqlite_store`). :func:`create_sqlite_store` does that
at start-up in a child process, whose memory is returned when it exits, and only when the
database does not exist yet.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from trainyard_registry.mlflow_names import (
    MlflowStoreError,
    ModelRequest,
    RegisteredModel,
    sqlite_db_path,
)

if TYPE_CHECKING:
    from trainyard_contracts.modelregistry import VersionInfo

CREATE_TIMEOUT_SECONDS = 300.0
MAX_ERROR_CHARS = 2000


class ModelStore(Protocol):
    """What the registry asks of its model store (``MlflowModelStore``), each call in a thread."""

    def register(self, req: ModelRequest) -> RegisteredModel: ...

    def version_info(self, name: str, version: int) -> VersionInfo | None: ...

    def set_alias(self, name: str, alias: str, version: int) -> None: ...


class DeferredModelStore:
    """A :class:`ModelStore` that builds the real one on its first call (once, whichever thread
    comes first; a build that failed is tried again on the next call)."""

    def __init__(self, build: Callable[[], ModelStore]) -> None:
        self._build = build
        self._store: ModelStore | None = None
        self._lock = threading.Lock()

    @property
    def built(self) -> bool:
        return self._store is not None

    def _get(self) -> ModelStore:
        with self._lock:
            if self._store is None:
                self._store = self._build()
            return self._store

    def register(self, req: ModelRequest) -> RegisteredModel:
        return self._get().register(req)

    def version_info(self, name: str, version: int) -> VersionInfo | None:
        return self._get().version_info(name, version)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self._get().set_alias(name, alias, version)


async def create_sqlite_store(tracking_uri: str) -> bool:
    """Create a ``sqlite:///`` tracking store that does not exist yet, in a child process.
    True if it was created; False for an existing database or another kind of store."""
    db = sqlite_db_path(tracking_uri)
    if db is None or db.exists():
        return False
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "trainyard_registry.deferred",
        tracking_uri,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(child.communicate(), CREATE_TIMEOUT_SECONDS)
    except TimeoutError as exc:
        child.kill()
        await child.wait()
        raise MlflowStoreError(
            f"creating the MLflow store at {tracking_uri} took over {CREATE_TIMEOUT_SECONDS:.0f}s"
        ) from exc
    if child.returncode != 0:
        tail = err.decode(errors="replace")[-MAX_ERROR_CHARS:]
        raise MlflowStoreError(f"creating the MLflow store at {tracking_uri} failed: {tail}")
    return True


def _create(tracking_uri: str) -> None:
    from trainyard_registry.mlflow_store import MlflowModelStore

    MlflowModelStore(tracking_uri)  # creates the database and the Default experiment's location


if __name__ == "__main__":
    _create(sys.argv[1])
