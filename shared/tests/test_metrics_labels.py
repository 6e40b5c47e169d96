"""Message metrics are labelled by subject shape, never by job id (bounded cardinality)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from trainyard_contracts import new_job_id
from trainyard_shared.broker import make_broker
from trainyard_shared.metrics_labels import subject_shape
from trainyard_shared.settings import CommonSettings

pytestmark = pytest.mark.unit


def test_a_job_id_token_becomes_a_wildcard_and_other_tokens_stay():
    job_id = new_job_id()
    assert subject_shape(f"trainyard.job.{job_id}.running") == "trainyard.job.*.running"
    assert subject_shape(f"t1.log.{job_id}.3") == "t1.log.*.*"
    assert subject_shape("trainyard.exec.exec-1.start") == "trainyard.exec.exec-1.start"
    assert subject_shape("trainyard.intake.submit") == "trainyard.intake.submit"


@pytest.mark.service
async def test_a_hundred_jobs_events_add_no_series_per_job(nats_server, prefix):
    registry = CollectorRegistry()
    sb = make_broker(CommonSettings(nats_url=nats_server.url, prefix=prefix), "probe", registry=registry)
    seen: list[str] = []
    all_seen = asyncio.Event()

    @sb.broker.subscriber(f"{prefix}.job.*.running")
    async def handle(body: str) -> None:
        seen.append(body)
        if len(seen) == 100:
            all_seen.set()

    async with sb.broker:
        await sb.broker.start()
        ids = [new_job_id() for _ in range(100)]
        for job_id in ids:
            await sb.broker.publish("x", f"{prefix}.job.{job_id}.running")
        await asyncio.wait_for(all_seen.wait(), 10)
    assert len(seen) == 100
    exposition = generate_latest(registry).decode()
    assert f"{prefix}.job.*.running" in exposition
    assert not any(job_id in exposition for job_id in ids)
