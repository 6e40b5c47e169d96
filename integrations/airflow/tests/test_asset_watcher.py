"""A real triggerer (`airflow triggerer`) runs the AssetWatcher of dags/'s trainyard_on_new_model:
a model version the registry records becomes an asset event, and a DAG run is queued for the DAG
scheduled on that asset (no scheduler runs here to start it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import stop
from test_model_events import _register

pytestmark = pytest.mark.airflow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _asset_events() -> list[dict[str, object]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetEvent.extra).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.uri == "trainyard://models/airflow-asset-model")
        ).all()  # fmt: skip
        return [dict(row.extra) for row in rows]


def _queued_runs() -> list[str]:
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return list(session.scalars(select(AssetDagRunQueue.target_dag_id)))


def test_a_new_model_version_is_an_asset_event_that_queues_the_dag(stack, airflow_db, tmp_path):
    env = {**os.environ, "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port())}
    airflow = [sys.executable, "-m", "airflow"]
    done = subprocess.run(
        [*airflow, "dags", "reserialize"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = open(tmp_path / "triggerer.log", "w")
    triggerer = subprocess.Popen([*airflow, "triggerer"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        job_id, version = _register(stack, "airflow-asset-model")
        deadline = time.monotonic() + 180
        while not (events := _asset_events()):
            assert triggerer.poll() is None, (tmp_path / "triggerer.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "triggerer.log").read_text()[-3000:]
            time.sleep(0.5)
        queued = _queued_runs()
    finally:
        stop(triggerer)
        log.close()
    (event,) = events
    payload = event["payload"]
    assert event["from_trigger"] is True
    assert (payload["name"], payload["version"], payload["job_id"]) == (
        "airflow-asset-model",
        version,
        job_id,
    )
    assert "trainyard_on_new_model" in queued
