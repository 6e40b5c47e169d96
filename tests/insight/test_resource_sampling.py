"""A running local job's CPU and memory, sampled by the executor while it runs: on the metrics
stream under the reserved names (sys.cpu, sys.cpu_seconds, sys.rss_bytes), in telemetry as the
job's gauges beside what it asked for, and in its queue's requested-vs-used view; a job's own
report under ``sys.`` is dropped. Real processes: the job makes 200 MiB resident and keeps a core
busy until the test lets it end."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from trainyard_contracts import JobSpec
from trainyard_scheduler.testkit import quick_scheduler
from trainyard_shared.testing.helpers import eventually, running, serving_http
from trainyard_telemetry.app import create_app as telemetry_app

from .jobs import PY, executor

pytestmark = [pytest.mark.insight, pytest.mark.service, pytest.mark.local]

MIB = 1024 * 1024
BUSY_200_MIB = (
    "import os, time, trainyard\n"
    "block = bytearray(b'x') * (200 * 1024 * 1024)  # written, so resident\n"
    "trainyard.report(1, loss=0.5, **{'sys.cpu': 99.0})  # a reserved name: dropped\n"
    "go = os.path.join(os.environ['TRAINYARD_WORKDIR'], 'go')\n"
    "deadline = time.time() + 90\n"
    "while not os.path.exists(go) and time.time() < deadline:\n"
    "    for _ in range(20000):  # busy: CPU to measure\n"
    "        pass\n"
)


def gauge(text: str, family: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(family + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_a_running_jobs_use_is_sampled_published_and_gauged(common, bus):
    telemetry = telemetry_app(common)
    async with (
        running(quick_scheduler(common)),
        running(executor(common, sample_seconds=0.3)),
        running(telemetry),
        serving_http(telemetry, lifespan="off") as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        spec = JobSpec(name="sampled", command=[PY, "-c", BUSY_200_MIB], queue="default")
        spec = spec.model_copy(
            update={"resources": spec.resources.model_copy(update={"cpu": 2.0, "memory": 1024})}
        )
        job_id = await bus.submit(spec)
        # one subscription for the whole test: the samples keep coming, so a read "until a pause"
        # (Bus.messages) would not end while the job runs
        seen: list[dict] = []

        async def collect(msg: Any) -> None:
            seen.extend(json.loads(msg.data)["points"])

        sub = await bus.js.subscribe(
            bus.subjects.metrics_of(job_id),
            cb=collect,
            ordered_consumer=True,
            stream=bus.subjects.streams.metrics,
        )

        async def points(_bus: Any, _job_id: str) -> list[dict]:
            return list(seen)

        async def sampled_big() -> list[dict] | None:
            seen = [p for p in await points(bus, job_id) if p["values"].get("sys.rss_bytes", 0) >= 200 * MIB]
            return seen or None

        samples = await eventually(sampled_big, 60, "a sample of the job's 200 MiB on the stream")
        assert samples[-1]["values"]["sys.rss_bytes"] < 1024 * MIB  # the job's, not the machine's

        async def busy_sample() -> dict | None:
            for point in await points(bus, job_id):
                if point["values"].get("sys.cpu", 0) > 0.1:
                    return point
            return None

        busy = await eventually(busy_sample, 60, "a sample with the job's CPU use")

        assert busy["values"]["sys.cpu_seconds"] > 0

        async def reported() -> list[dict] | None:
            return [p for p in await points(bus, job_id) if "loss" in p["values"]] or None

        [report] = await eventually(reported, 60, "the job's own report on the stream")
        assert report["values"] == {"loss": 0.5}  # its sys.cpu dropped
        assert all(p["values"].get("sys.cpu") != 99.0 for p in await points(bus, job_id))

        async def gauged() -> str | None:
            text = (await http.get("/metrics")).text
            used = gauge(text, "trainyard_queue_used", queue="default", resource="memory_bytes")
            return text if used is not None and used >= 200 * MIB else None

        text = await eventually(gauged, 60, "the queue's used memory on telemetry's /metrics")
        assert gauge(text, "trainyard_job_metric", job_id=job_id, name="sys.rss_bytes") >= 200 * MIB  # type: ignore[operator]
        assert gauge(text, "trainyard_job_requested", job_id=job_id, resource="cpu") == 2.0
        assert gauge(text, "trainyard_job_requested", job_id=job_id, resource="memory_bytes") == 1024 * MIB
        assert gauge(text, "trainyard_queue_requested", queue="default", resource="cpu") == 2.0
        assert gauge(text, "trainyard_queue_used", queue="default", resource="cpu") is not None
        # a sample's step is its time, not a training step: the job's step is still its own
        assert gauge(text, "trainyard_job_metric_step", job_id=job_id) == 1.0
        assert not re.search(r'name="sys\.cpu",queue="default"\} 99\.0', text)

        workdir = common.resolved_data_dir() / "executor" / "exec-m" / "work" / job_id / "attempt-1"
        (workdir / "go").touch()
        await bus.wait_state(job_id, "succeeded")

        async def gone() -> bool:
            text = (await http.get("/metrics")).text
            return (
                job_id not in text
                and gauge(text, "trainyard_queue_used", queue="default", resource="cpu") is None
            )

        await eventually(gone, 60, "the job's series and its queue's use gone after it ended")
        await sub.unsubscribe()
