"""Every panel of both Grafana dashboards (deploy/grafana/dashboards) answers with data when its
query runs through a real Prometheus (Debian's) scraping the stack while jobs run.

The Prometheus is configured from deploy/prometheus/prometheus.yml (its `trainyard` scrape job and
its rule files; targets pointed at this test's services, a 1 s interval), so the test also shows
that the config and the alert rules load. The jobs: two short ones that succeed one after the
other (a histogram's rate needs a second observation after its series exists), one that fails and
is retried once (requeues, failures), two `trainyard status` questions to the scheduler (its
request handlers' latency), and one that runs while the panels are queried, reporting a
growing step and a loss, holding 64 MiB and keeping a core busy (the executor samples it every
0.3 s). Dashboard variables are substituted as Grafana would: ``$job`` is that job, ``$queue`` its
queue.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from trainyard_contracts import JobSpec
from trainyard_contracts.scheduling import WhyRequest
from trainyard_contracts.spec import Retries
from trainyard_scheduler.testkit import quick_scheduler
from trainyard_shared.natsserver import free_port
from trainyard_shared.testing.helpers import eventually, running, serving_http
from trainyard_telemetry.app import create_app as telemetry_app

from .jobs import PY, executor

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"


def require_prometheus() -> None:
    if not shutil.which("prometheus"):
        pytest.fail("prometheus is not installed: CI runs these tests (.ci/run installs it)")


pytestmark = [
    pytest.mark.insight,
    pytest.mark.service,
    pytest.mark.local,
    pytest.mark.skipif(
        not shutil.which("prometheus") and not os.environ.get("CI"),
        reason="no prometheus (apt-get install -y prometheus); under CI a missing one fails",
    ),
]

# panels that honestly cannot have data in this run, and why
NO_DATA_HERE = {
    ("trainyard-overview", "Handler exceptions per second"): "no handler raises in a healthy run",
    # the executor reads GPUs through NVML: no GPU here (test_gpu_sampling.py uses a stand-in)
    ("trainyard-training-job", "GPUs busy"): "no GPU on this machine",
    ("trainyard-training-job", "GPU memory used"): "no GPU on this machine",
}

RUNNING = (
    "import os, time, trainyard\n"
    "block = bytearray(b'x') * (64 * 1024 * 1024)\n"
    "go = os.path.join(os.environ['TRAINYARD_WORKDIR'], 'go')\n"
    "deadline, step, last = time.time() + 240, 0, 0.0\n"
    "while not os.path.exists(go) and time.time() < deadline:\n"
    "    for _ in range(20000):\n"
    "        pass\n"
    "    if time.time() - last > 0.2:\n"
    "        step, last = step + 1, time.time()\n"
    "        trainyard.report(step, loss=1.0 / step, accuracy=min(0.99, step / 100))\n"
)
SHORT = "import trainyard; trainyard.report(1, loss=0.5)\n"
FAILING = "import sys; sys.exit(3)\n"


def panels(path: Path) -> tuple[str, list[tuple[str, str]]]:
    """(uid, [(panel title, expr)]) of a dashboard file."""
    board = json.loads(path.read_text())
    found = [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]
    return board["uid"], found


def substitute(expr: str, variables: dict[str, str]) -> str:
    for name, value in variables.items():
        expr = re.sub(rf"\$\{{{name}\}}|\${name}\b", value, expr)
    assert "$" not in expr, f"a variable the test does not know in {expr}"
    return expr


def prometheus_config(folder: Path, targets: dict[str, str]) -> Path:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(ROOT / "deploy" / "prometheus" / "rules" / "*.yml")]
    (trainyard,) = [job for job in config["scrape_configs"] if job["job_name"] == "trainyard"]
    trainyard["static_configs"] = [
        {"targets": [address], "labels": {"service": service}} for service, address in targets.items()
    ]
    config["scrape_configs"] = [trainyard]
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_prometheus(folder: Path, config: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
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


async def query(http: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
    try:
        answer = (await http.get("/api/v1/query", params={"query": expr})).json()
    except (httpx.HTTPError, ValueError):
        return []
    assert answer.get("status") == "success", f"{expr}: {answer}"
    result = answer["data"]["result"]
    return [s for s in result if not math.isnan(float(s["value"][1]))]


async def test_every_dashboard_panel_query_returns_data(common, bus, tmp_path):
    require_prometheus()
    apps = {
        "scheduler": quick_scheduler(common),
        "executor": executor(common, sample_seconds=0.3),
        "telemetry": telemetry_app(common),
    }
    async with (
        running(apps["scheduler"]),
        running(apps["executor"]),
        running(apps["telemetry"]),
        serving_http(apps["scheduler"], lifespan="off") as scheduler_url,
        serving_http(apps["executor"], lifespan="off") as executor_url,
        serving_http(apps["telemetry"], lifespan="off") as telemetry_url,
    ):
        urls = {"scheduler": scheduler_url, "executor": executor_url, "telemetry": telemetry_url}
        config = prometheus_config(tmp_path, {k: v.removeprefix("http://") for k, v in urls.items()})
        prometheus, url = start_prometheus(tmp_path, config)
        try:
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:

                async def rules_loaded() -> list[dict[str, Any]] | None:
                    try:
                        groups = (await http.get("/api/v1/rules")).json()["data"]["groups"]
                    except (httpx.HTTPError, ValueError, KeyError):
                        return None
                    return [r for g in groups for r in g["rules"]] or None

                rules = await eventually(rules_loaded, 60, "the alert rules loaded")
                assert len(rules) >= 5 and all(r["health"] != "err" for r in rules), rules

                async def scraped(expr: str) -> bool:
                    return bool(await query(http, expr))

                # two successes one after the other: the run-time histogram's rate needs a second
                # observation after its series was first scraped
                first = await bus.submit(JobSpec(name="short", command=[PY, "-c", SHORT]))
                await bus.wait_state(first, "succeeded", timeout=60)
                done = 'trainyard_job_run_seconds_count{outcome="succeeded"}'
                await eventually(lambda: scraped(done), 60, "the first end in Prometheus")
                failing = JobSpec(
                    name="failing", command=[PY, "-c", FAILING], retries=Retries(limit=1, backoff=0.1)
                )
                second = await bus.submit(JobSpec(name="short", command=[PY, "-c", SHORT]))
                failed = await bus.submit(failing)
                await bus.wait_state(second, "succeeded", timeout=60)
                await bus.wait_state(failed, "failed", timeout=60)
                job_id = await bus.submit(JobSpec(name="watched", command=[PY, "-c", RUNNING]))
                await bus.wait_state(job_id, "running", timeout=60)
                # what `trainyard status` asks the scheduler, twice around a scrape: the request
                # handlers' latency histogram (a faststream subscriber's) then has a rate
                why = WhyRequest(job_id=job_id).model_dump_json().encode()
                await bus.nc.request(bus.subjects.scheduler_why, why, timeout=30)
                handled = "faststream_received_processed_messages_duration_seconds_count"
                await eventually(lambda: scraped(handled), 60, "a handled request in Prometheus")
                await bus.nc.request(bus.subjects.scheduler_why, why, timeout=30)

                variables = {"job": job_id, "queue": "default"}
                wanted: dict[tuple[str, str], str] = {}
                for path in sorted(DASHBOARDS.glob("*.json")):
                    uid, found = panels(path)
                    for title, expr in found:
                        if (uid, title) not in NO_DATA_HERE:
                            wanted[uid, f"{title}: {expr}"] = substitute(expr, variables)
                assert {uid for uid, _ in wanted} == {"trainyard-overview", "trainyard-training-job"}
                missing: list[str] = []

                async def every_panel_answers() -> bool:
                    answers = await asyncio.gather(*(query(http, e) for e in wanted.values()))
                    missing[:] = [
                        f"{uid} / {what}" for (uid, what), a in zip(wanted, answers, strict=True) if not a
                    ]
                    return not missing

                try:
                    await eventually(every_panel_answers, 120, "data for every panel")
                except AssertionError:
                    raise AssertionError("panels without data:\n" + "\n".join(missing)) from None

                # the variables' own queries offer the job (Grafana's label_values through the API)
                board = json.loads((DASHBOARDS / "training-job.json").read_text())
                variable = {v["name"]: v for v in board["templating"]["list"]}
                assert "label_values(trainyard_job_metric" in variable["job"]["definition"]
                offered = (
                    await http.get(
                        "/api/v1/label/job_id/values",
                        params={"match[]": 'trainyard_job_metric{queue=~".*"}'},
                    )
                ).json()["data"]
                assert job_id in offered

                workdir = common.resolved_data_dir() / "executor" / "exec-m" / "work" / job_id / "attempt-1"
                (workdir / "go").touch()
                await bus.wait_state(job_id, "succeeded", timeout=60)
        finally:
            prometheus.terminate()
            prometheus.wait(timeout=30)
