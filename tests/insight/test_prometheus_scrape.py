"""Debian's Prometheus scrapes telemetry while a real job reports: the job's metric is queryable
while it runs and gone (stale) once it has ended."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from trainyard_contracts import JobSpec
from trainyard_scheduler.testkit import quick_scheduler
from trainyard_shared.natsserver import free_port
from trainyard_shared.testing.helpers import eventually, running, serving_http
from trainyard_telemetry.app import create_app as telemetry_app

from .jobs import PY, executor

pytestmark = [
    pytest.mark.insight,
    pytest.mark.service,
    pytest.mark.local,
    pytest.mark.skipif(
        not shutil.which("prometheus"), reason="no prometheus (apt-get install -y prometheus)"
    ),
]

JOB = (
    "import os, time, trainyard\n"
    "trainyard.report(7, loss=0.375)\n"
    "go = os.path.join(os.environ['TRAINYARD_WORKDIR'], 'go')\n"
    "deadline = time.time() + 90\n"
    "while not os.path.exists(go) and time.time() < deadline:\n"
    "    time.sleep(0.05)\n"
)


def start_prometheus(folder: Path, target: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = folder / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: telemetry\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "prometheus.log").open("wb"),
    )
    return process, f"http://127.0.0.1:{port}"


async def test_prometheus_sees_a_running_jobs_metric_and_not_after_it_ended(common, bus, tmp_path):
    telemetry = telemetry_app(common)
    async with (
        running(quick_scheduler(common)),
        running(executor(common)),
        running(telemetry),
        serving_http(telemetry, lifespan="off") as telemetry_url,
    ):
        prometheus, url = start_prometheus(tmp_path, telemetry_url.removeprefix("http://"))
        try:
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                job_id = await bus.submit(JobSpec(name="scraped", command=[PY, "-c", JOB]))
                query = f'trainyard_job_metric{{job_id="{job_id}",name="loss"}}'

                async def result() -> list:
                    try:
                        answer = (await http.get("/api/v1/query", params={"query": query})).json()
                    except (httpx.HTTPError, ValueError):
                        return []  # not ready yet
                    return list(answer.get("data", {}).get("result", []))

                [series] = await eventually(result, 60, "the job's loss in Prometheus")
                assert float(series["value"][1]) == 0.375 and series["metric"]["queue"] == "default"
                workdir = common.resolved_data_dir() / "executor" / "exec-m" / "work" / job_id / "attempt-1"
                (workdir / "go").touch()
                await bus.wait_state(job_id, "succeeded")

                async def gone() -> bool:
                    return not await result()

                await eventually(gone, 60, "the series stale in Prometheus after the job ended")
        finally:
            prometheus.terminate()
            prometheus.wait(timeout=30)
