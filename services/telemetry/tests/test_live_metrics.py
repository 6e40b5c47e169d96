"""The latest values running jobs report, as gauges only while each job runs (pure, no NATS)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from trainyard_contracts import (
    JobQueued,
    JobRunning,
    JobSpec,
    JobSubmitted,
    JobSucceeded,
    MetricPoint,
    MetricsBatch,
)
from trainyard_telemetry.live import LiveLimits
from trainyard_telemetry.metrics import JobMetrics

pytestmark = [pytest.mark.unit, pytest.mark.insight]


def batch(job_id: str, *points: tuple[int, dict[str, float]], attempt: int = 1) -> MetricsBatch:
    return MetricsBatch(
        job_id=job_id,
        attempt=attempt,
        seq=0,
        points=[MetricPoint(step=s, time=1.0, values=v) for s, v in points],
    )


def started(metrics: JobMetrics, job_id: str, queue: str = "vision") -> None:
    metrics.observe(JobSubmitted(job_id=job_id, spec=JobSpec(name="x", command=["true"], queue=queue)))
    metrics.observe(JobQueued(job_id=job_id, queue=queue))
    metrics.observe(JobRunning(job_id=job_id, executor_id="e"))


def value(registry: CollectorRegistry, job_id: str, name: str) -> float | None:
    return registry.get_sample_value(
        "trainyard_job_metric", {"job_id": job_id, "queue": "vision", "name": name}
    )


def test_a_running_jobs_latest_values_are_gauges_that_go_when_it_ends():
    registry = CollectorRegistry()
    metrics = JobMetrics(registry)
    started(metrics, "jobA")
    metrics.live.observe(batch("jobA", (1, {"loss": 0.5}), (2, {"loss": 0.25, "acc": 0.9})))
    assert value(registry, "jobA", "loss") == 0.25 and value(registry, "jobA", "acc") == 0.9
    assert registry.get_sample_value("trainyard_job_metric_step", {"job_id": "jobA", "queue": "vision"}) == 2
    metrics.live.observe(batch("jobA", (1, {"loss": 9.0})))  # redelivered, older: not taken
    assert value(registry, "jobA", "loss") == 0.25
    metrics.observe(JobSucceeded(job_id="jobA"))
    assert value(registry, "jobA", "loss") is None and "jobA" not in metrics.live.jobs
    metrics.live.observe(batch("jobA", (3, {"loss": 0.1})))  # a late batch after the end
    assert value(registry, "jobA", "loss") is None and "jobA" not in metrics.live.jobs


def test_a_job_not_yet_seen_running_shows_once_its_running_event_comes():
    registry = CollectorRegistry()
    metrics = JobMetrics(registry)
    metrics.live.observe(batch("jobB", (1, {"loss": 0.5})))
    assert value(registry, "jobB", "loss") is None
    started(metrics, "jobB")
    assert value(registry, "jobB", "loss") == 0.5


def test_names_per_job_and_jobs_are_bounded_and_the_allow_pattern_applies():
    registry = CollectorRegistry()
    metrics = JobMetrics(registry, live=LiveLimits(max_jobs=2, max_names=2, allow=r"loss|acc|lr"))
    for job in ("j1", "j2", "j3"):
        started(metrics, job)
        metrics.live.observe(batch(job, (1, {"loss": 1.0, "secret_path": 2.0, "acc": 3.0, "lr": 4.0})))
    samples = [s for m in registry.collect() if m.name == "trainyard_job_metric" for s in m.samples]
    assert {(s.labels["job_id"], s.labels["name"]) for s in samples} == {
        ("j2", "loss"),
        ("j2", "acc"),
        ("j3", "loss"),
        ("j3", "acc"),
    }
    assert metrics.live.dropped["jobs"] == 1 and metrics.live.dropped["names"] == 6
    assert registry.get_sample_value("trainyard_job_metric_dropped_total", {"reason": "names"}) == 6


def test_a_new_attempt_starts_from_nothing():
    registry = CollectorRegistry()
    metrics = JobMetrics(registry)
    started(metrics, "jobC")
    metrics.live.observe(batch("jobC", (5, {"loss": 0.5, "acc": 0.1})))
    metrics.observe(JobRunning(job_id="jobC", executor_id="e", attempt=2))
    metrics.live.observe(batch("jobC", (0, {"loss": 0.9}), attempt=2))
    assert value(registry, "jobC", "loss") == 0.9 and value(registry, "jobC", "acc") is None


def test_resource_samples_are_always_taken_and_summed_per_queue_against_what_jobs_asked():
    """The executor's sys.* names pass an allow pattern and the name limit (they are its few), do
    not move the job's step (a sample's step is its time), and make the queue's requested-vs-used
    view together with what each job asked for (its replicas together)."""
    registry = CollectorRegistry()
    metrics = JobMetrics(registry, live=LiveLimits(max_names=1, allow="loss"))
    resources = {"cpu": 2, "memory": 1024}
    spec = JobSpec(name="x", command=["true"], queue="vision", replicas=2, resources=resources)
    metrics.observe(JobSubmitted(job_id="jobA", spec=spec))
    metrics.observe(JobRunning(job_id="jobA", executor_id="e"))
    started(metrics, "jobB")  # asked for the default 1 core, 512 MiB; its use not sampled
    sample = {"sys.cpu": 0.5, "sys.cpu_seconds": 12.0, "sys.rss_bytes": 300.0 * 2**20}
    metrics.live.observe(batch("jobA", (3, {"loss": 0.5}), (1_764_770_000, sample)))
    assert value(registry, "jobA", "sys.cpu") == 0.5 and value(registry, "jobA", "loss") == 0.5
    assert registry.get_sample_value("trainyard_job_metric_step", {"job_id": "jobA", "queue": "vision"}) == 3
    assert metrics.live.dropped["names"] == 0

    def gauge(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert gauge("trainyard_job_requested", job_id="jobA", queue="vision", resource="cpu") == 4
    memory = gauge("trainyard_job_requested", job_id="jobA", queue="vision", resource="memory_bytes")
    assert memory == 2 * 2**30
    # the queue's view holds the sampled job only: jobB's request has no use to set against it
    assert gauge("trainyard_queue_requested", queue="vision", resource="cpu") == 4
    assert gauge("trainyard_queue_used", queue="vision", resource="cpu") == 0.5
    assert gauge("trainyard_queue_used", queue="vision", resource="memory_bytes") == 300 * 2**20
    metrics.observe(JobSucceeded(job_id="jobA"))
    assert gauge("trainyard_queue_used", queue="vision", resource="cpu") is None


def test_a_queues_metric_names_narrow_what_its_jobs_show_from_the_next_scrape():
    registry = CollectorRegistry()
    metrics = JobMetrics(registry)
    patterns: dict[str, list[str] | None] = {"vision": ["loss", "eval/*"]}
    metrics.live.queue_patterns = lambda queue: patterns.get(queue)
    started(metrics, "jobA")
    reported = {"loss": 0.5, "acc": 0.9, "eval/f1": 0.8, "evaluation": 1.0, "sys.cpu": 1.5}
    metrics.live.observe(batch("jobA", (1, reported)))
    shown = {name for name in reported if value(registry, "jobA", name) is not None}
    assert shown == {"loss", "eval/f1", "sys.cpu"}  # the executor's samples always
    patterns["vision"] = []  # the queue shows none of its jobs' own names now
    assert {name for name in reported if value(registry, "jobA", name) is not None} == {"sys.cpu"}
    patterns["vision"] = None  # not narrowed: every name the installation allows
    assert {name for name in reported if value(registry, "jobA", name) is not None} == set(reported)
