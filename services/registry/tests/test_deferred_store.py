"""The registry starts without MLflow in memory: a new SQLite store is created at start-up by a
child process, and the model store is built on its first use (real MLflow, SQLite, no server)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from trainyard_registry.deferred import DeferredModelStore

pytestmark = pytest.mark.registry

STARTS_LIKE_THE_SERVICE = """
import asyncio, sys
from trainyard_registry.deferred import create_sqlite_store
import trainyard_registry.app, trainyard_registry.core, trainyard_registry.requests
uri = sys.argv[1]
print(asyncio.run(create_sqlite_store(uri)), asyncio.run(create_sqlite_store(uri)))
print(sorted(m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")))
"""


def test_a_new_store_is_created_by_a_child_and_mlflow_stays_out_of_the_service(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    done = subprocess.run(
        [sys.executable, "-c", STARTS_LIKE_THE_SERVICE, uri], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    created, again = done.stdout.splitlines()[0].split()
    assert (created, again) == ("True", "False")  # created once, an existing store is left alone
    assert done.stdout.splitlines()[1] == "[]"  # not one MLflow module in the service's process
    # created by us, so the Default experiment's artifacts live beside the database, not in the
    # working directory of whichever job's mlflow.start_run() came first
    default = MlflowClient(tracking_uri=uri).get_experiment("0")
    assert default.artifact_location == (tmp_path / "mlflow" / "mlartifacts" / "0").as_uri()


def test_the_deferred_store_is_built_once_on_first_use_by_whichever_thread_comes_first() -> None:
    builds: list[int] = []

    class Store:
        def set_alias(self, name: str, alias: str, version: int) -> None:
            return None

    def build() -> Store:
        builds.append(threading.get_ident())
        return Store()

    deferred = DeferredModelStore(build)  # type: ignore[arg-type]
    assert not deferred.built and builds == []
    threads = [threading.Thread(target=deferred.set_alias, args=("m", "prod", 1)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert deferred.built and len(builds) == 1
