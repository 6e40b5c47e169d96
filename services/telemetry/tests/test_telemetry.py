"""Telemetry: idempotent observations, state gauges, and catch-up from the stream after a restart."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import nats
import pytest
from prometheus_client import CollectorRegistry

from trainyard_contracts import (
    JobRequeued,
    JobRunning,
    JobSpec,
    JobState,
    JobSubmitted,
    JobSucceeded,
    Subjects,
    lifecycle,
)
from trainyard_contracts._time import utcnow
from trainyard_shared.settings import CommonSettings
from trainyard_shared.testing.helpers import running
from trainyard_telemetry.app import create_app
from trainyard_telemetry.jobstates import JobStates
from trainyard_telemetry.metrics import JobMetrics

NOW = utcnow()


def record(state=JobState.QUEUED, queue="default"):
    r = lifecycle.new_record(
        "job0000001", JobSpec(name="x", command=["true"], queue=queue), NOW - timedelta(seconds=3), None
    )
    return lifecycle.advance(r, state, NOW) if state != JobState.SUBMITTED else r


def sample(registry, name, **labels):
    return registry.get_sample_value(name, labels)


@pytest.mark.unit
def test_each_event_is_counted_once_and_waits_are_observed():
    registry = CollectorRegistry()
    rec = record().model_copy(update={"state": JobState.SCHEDULED})
    states = JobStates()
    states.seed([rec])  # what the start-up read of the bucket found
    metrics = JobMetrics(registry, states)
    running = JobRunning(job_id=rec.job_id, executor_id="e", time=NOW)
    assert metrics.observe(running) is True
    assert metrics.observe(running) is False  # redelivered: not counted again
    assert sample(registry, "trainyard_job_events_total", type="running") == 1
    assert sample(registry, "trainyard_job_submit_to_start_seconds_count", queue="default") == 1
    assert sample(registry, "trainyard_job_submit_to_start_seconds_sum", queue="default") == 3
    assert sample(registry, "trainyard_jobs", state="running") == 1
    done = JobSucceeded(job_id=rec.job_id, duration_seconds=12.5)
    metrics.observe(done)
    assert sample(registry, "trainyard_job_run_seconds_sum", queue="default", outcome="succeeded") == 12.5
    assert sample(registry, "trainyard_jobs", state="succeeded") == 1
    assert sample(registry, "trainyard_jobs", state="running") == 0


@pytest.mark.service
async def test_catches_up_from_the_stream_and_serves_metrics(nats_server, prefix, tmp_path):
    subjects = Subjects(prefix)
    common = CommonSettings(nats_url=nats_server.url, prefix=prefix, data_dir=tmp_path)
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()

    async def publish_one(i: int) -> None:
        event = JobSubmitted(job_id=f"job{i:07d}", spec=JobSpec(name="x", command=["true"]))
        await js.publish(
            event.subject(subjects), event.model_dump_json().encode(), headers={"Nats-Msg-Id": event.msg_id()}
        )

    app = create_app(common)
    async with running(app):
        for i in range(3):
            await publish_one(i)
        metrics = app.context.get("telemetry_metrics")
        await _until(lambda: metrics.events.labels("submitted")._value.get() == 3)

    # while telemetry is down, more events happen; after a restart it catches up from the stream
    for i in range(3, 5):
        await publish_one(i)
    app = create_app(common)
    async with running(app):
        metrics = app.context.get("telemetry_metrics")
        await _until(lambda: metrics.events.labels("submitted")._value.get() == 2)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            text = (await client.get("/metrics")).text
    await nc.drain()
    assert 'trainyard_job_events_total{type="submitted"} 2.0' in text
    assert "faststream_received_processed_messages_total" in text


async def _until(predicate, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.05)


@pytest.mark.unit
def test_requeues_are_counted_by_queue_and_reason_once():
    """The executor-lost alert (deploy/prometheus/rules) reads this counter."""
    registry = CollectorRegistry()
    states = JobStates()
    states.seed([record(queue="gpu")])
    metrics = JobMetrics(registry, states)
    lost = JobRequeued(job_id="job0000001", attempt=1, reason="executor_lost", next_attempt=2)
    assert metrics.observe(lost) is True
    assert metrics.observe(lost) is False  # redelivered: not counted again
    metrics.observe(JobRequeued(job_id="job0000001", attempt=2, reason="retry", next_attempt=3))
    assert sample(registry, "trainyard_job_requeues_total", queue="gpu", reason="executor_lost") == 1
    assert sample(registry, "trainyard_job_requeues_total", queue="gpu", reason="retry") == 1


@pytest.mark.unit
def test_queue_depth_reads_zero_once_a_queue_has_drained():
    """A queue whose last waiting job started keeps its series at 0 (no stale last value), and the
    default queue has a series before any job was seen."""
    registry = CollectorRegistry()
    metrics = JobMetrics(registry, JobStates())
    assert sample(registry, "trainyard_queue_depth", queue="default") == 0
    queued = record(JobState.QUEUED, queue="gpu")
    metrics.states.seed([queued])
    assert sample(registry, "trainyard_queue_depth", queue="gpu") == 1
    metrics.observe(JobRunning(job_id=queued.job_id, executor_id="e", time=NOW))
    assert sample(registry, "trainyard_queue_depth", queue="gpu") == 0
    assert sample(registry, "trainyard_queue_depth", queue="default") == 0
