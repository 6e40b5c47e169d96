"""Killing a task cancels its job. On a worker: Airflow's supervisor sends SIGTERM to the task's
process (mark failed, a timeout), whose handler calls the operator's on_kill; here the test sends
it to a process running dag.test(). While deferred: the triggerer calls the trigger's on_kill
(test_triggers.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from conftest import HERE, stop

pytestmark = pytest.mark.airflow


def test_sigterm_to_a_running_task_cancels_its_job_and_fails_the_task(stack, airflow_db, tmp_path):
    log = open(tmp_path / "dag.log", "w")
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "run_dag.py"), "trainyard_job_long_on_worker"],
        stdout=log, stderr=subprocess.STDOUT, text=True, env=os.environ.copy(),
    )  # fmt: skip
    try:
        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.token}"}) as api:
            deadline = time.monotonic() + 180
            running: list[dict[str, str]] = []
            while not running:
                assert proc.poll() is None, (tmp_path / "dag.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the task's job never ran"
                running = api.get("/v1/jobs", params={"name": "airflow-long", "state": "running"}).json()[
                    "jobs"
                ]
                time.sleep(0.2)
            (job,) = running
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=180)
            record = api.get(f"/v1/jobs/{job['job_id']}").json()
    finally:
        stop(proc)
        log.close()
    output = (tmp_path / "dag.log").read_text()
    assert record["state"] == "cancelled", record
    assert json.loads(output.strip().splitlines()[-1]) == {"train": "failed"}, output[-3000:]
    assert f"trainyard job {job['job_id']} cancelled" in output  # on_kill's line in the task's log
