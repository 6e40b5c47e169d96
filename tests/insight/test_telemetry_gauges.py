"""Telemetry's /metrics, scraped over HTTP: a running job's reported values are gauges while it runs
and gone after it ends."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from trainyard_contracts import JobSpec, QueueConfig
from trainyard_scheduler.testkit import quick_scheduler
from trainyard_shared.testing.helpers import eventually, running, serving_http
from trainyard_telemetry.app import create_app as telemetry_app

from .jobs import PY, executor

pytestmark = [pytest.mark.insight, pytest.mark.service, pytest.mark.local]

JOB = (
    "import os, time, trainyard\n"
    "trainyard.report(1, loss=0.5)\n"
    "trainyard.report(2, loss=0.25, accuracy=0.75)\n"
    "go = os.path.join(os.environ['TRAINYARD_WORKDIR'], 'go')\n"
    "deadline = time.time() + 60\n"
    "while not os.path.exists(go) and time.time() < deadline:\n"
    "    time.sleep(0.05)\n"
)


@contextlib.asynccontextmanager
async def telemetry_beside_a_job_path(common: Any) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """A scheduler, an executor and telemetry, its /metrics served over HTTP on loopback."""
    telemetry = telemetry_app(common)
    async with (
        running(quick_scheduler(common)),
        running(executor(common)),
        running(telemetry),
        serving_http(telemetry, lifespan="off") as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        yield telemetry, http


async def test_a_running_jobs_metrics_are_gauges_until_it_ends(common, bus):
    async with telemetry_beside_a_job_path(common) as (_, http):
        job_id = await bus.submit(JobSpec(name="gauged", command=[PY, "-c", JOB], queue="default"))
        loss = f'trainyard_job_metric{{job_id="{job_id}",name="loss",queue="default"}} 0.25'
        accuracy = f'trainyard_job_metric{{job_id="{job_id}",name="accuracy",queue="default"}} 0.75'
        step = f'trainyard_job_metric_step{{job_id="{job_id}",queue="default"}} 2.0'

        async def scraped_while_running() -> str | None:
            text = (await http.get("/metrics")).text
            return text if loss in text else None

        text = await eventually(scraped_while_running, 30, "the job's gauges on /metrics")
        assert accuracy in text and step in text
        assert (await bus.record(job_id)).state.value == "running"  # type: ignore[union-attr]
        workdir = common.resolved_data_dir() / "executor" / "exec-m" / "work" / job_id / "attempt-1"
        (workdir / "go").touch()
        await bus.wait_state(job_id, "succeeded")

        async def gone() -> bool:
            return job_id not in (await http.get("/metrics")).text

        await eventually(gone, 30, "the job's series gone from /metrics after it ended")


async def test_a_queues_metric_names_narrow_what_its_running_jobs_show(common, bus):
    """The queue's ``metric_names`` (watched from the queues bucket) hide ``accuracy`` while it is
    set; cleared, the same running job shows it from the next scrape."""
    async with telemetry_beside_a_job_path(common) as (telemetry, http):
        kv = await bus.js.key_value(bus.subjects.buckets.queues)
        await kv.put("vision", QueueConfig(name="vision", metric_names=["loss"]).model_dump_json().encode())
        live = telemetry.context.get("telemetry_metrics").live

        async def watched() -> bool:
            return bool(live.queue_patterns("vision") == ["loss"])

        await eventually(watched, 30, "telemetry's view of the queue's metric_names")
        job_id = await bus.submit(JobSpec(name="narrowed", command=[PY, "-c", JOB], queue="vision"))
        loss = f'trainyard_job_metric{{job_id="{job_id}",name="loss",queue="vision"}} 0.25'
        accuracy = f'trainyard_job_metric{{job_id="{job_id}",name="accuracy",queue="vision"}} 0.75'

        async def scraped(line: str) -> str | None:
            text = (await http.get("/metrics")).text
            return text if line in text else None

        text = await eventually(lambda: scraped(loss), 30, "the job's loss on /metrics")
        assert accuracy not in text
        await kv.put("vision", QueueConfig(name="vision").model_dump_json().encode())
        await eventually(lambda: scraped(accuracy), 30, "accuracy shown once the queue no longer narrows")
        workdir = common.resolved_data_dir() / "executor" / "exec-m" / "work" / job_id / "attempt-1"
        (workdir / "go").touch()
        await bus.wait_state(job_id, "succeeded")
