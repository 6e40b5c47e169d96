"""A Kubernetes attempt's CPU and memory from the resource metrics API (backends/kube_usage.py).

No API server and no metrics-server can run on this machine (/work/shared/ENVIRONMENT.md). The
client side runs against kmock's emulator (kubeemulator.py) with ``put_pod_metrics``, **a stand-in
for metrics-server**: the test stores each pod's PodMetrics object (the shape metrics-server
answers with) and the official client reads it through ``CustomObjectsApi`` as it would from a
cluster. How often a real metrics-server scrapes, and what its windows really are, is not tested.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from trainyard_executor.backends.kube_attempt import KubeAttempt
from trainyard_executor.backends.kube_manifests import KubeOptions
from trainyard_executor.backends.kube_usage import (
    NOTE_AFTER,
    PodMetricsReader,
    go_duration,
    pod_usage,
)
from trainyard_executor.backends.kubernetes import KubernetesBackend
from trainyard_executor.kubeemulator import (
    SAMPLE_IMAGE,
    Lines,
    NodeRun,
    backend_on,
    emulator,
    pod_metrics_object,
    pod_object,
    put_pod_metrics,
    sample_launch,
    whole_gang,
)
from trainyard_executor.sampling import CPU, CPU_SECONDS, RSS, Reading, ResourceSampler
from trainyard_executor.testkit import Clock

pytestmark = pytest.mark.insight

NS = "trainyard"
KI = 1024
OPTS = KubeOptions(namespace=NS, executor_id="kube-usage", default_image=SAMPLE_IMAGE)


# -- the figures, read (pure) ------------------------------------------------------------------


@pytest.mark.unit
def test_pod_metrics_quantities_are_parsed_and_the_containers_summed() -> None:
    metrics = pod_metrics_object(
        "p-0",
        NS,
        {"job": ("250m", "123456Ki"), "sidecar": ("1234567n", "1Mi")},
        "2026-12-03T18:00:15Z",
        "10.5s",
    )
    usage = pod_usage(metrics)
    assert usage is not None
    assert usage.cores == pytest.approx(0.250 + 0.001234567)
    assert usage.memory_bytes == 123456 * KI + 1024 * KI
    assert usage.window_s == 10.5
    assert usage.timestamp == 1796320815.0  # 2026-12-03T18:00:15Z
    assert pod_usage({"containers": [{"usage": {"cpu": "a lot"}}], "timestamp": "x"}) is None
    assert pod_usage({"kind": "Status"}) is None


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15s", 15.0), ("1m0s", 60.0), ("10.5s", 10.5), ("500ms", 0.5), ("", None), ("15", None)],
)
def test_windows_are_go_durations(text: str, seconds: float | None) -> None:
    assert go_duration(text) == seconds


def _reader(answers: dict[str, dict[str, Any] | Exception], notes: list[str]) -> PodMetricsReader:
    def get(pod: str) -> dict[str, Any]:
        answer = answers[pod]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return PodMetricsReader(get, lambda: sorted(answers), lambda pod, exc: notes.append(pod))


@pytest.mark.unit
def test_cpu_seconds_are_integrated_from_each_pods_windows_and_a_gang_is_summed() -> None:
    """Each new window counts its rate over the time since the pod's last one; a window seen again
    is not counted twice; a missed window is filled with the next one's rate; a pod that goes
    keeps what it used."""
    notes: list[str] = []
    answers: dict[str, dict[str, Any] | Exception] = {
        "r0": pod_metrics_object("r0", NS, {"job": ("500m", "100Mi")}, "2026-12-03T18:00:15Z"),
        "r1": pod_metrics_object("r1", NS, {"job": ("1", "50Mi")}, "2026-12-03T18:00:10Z", "10s"),
    }
    read = _reader(answers, notes)
    first = read()
    assert first == Reading(cpu_seconds=0.5 * 15 + 1.0 * 10, rss_bytes=150 * KI * KI, cpu_cores=1.5)
    assert read() == first  # metrics-server has not scraped again: nothing new counted
    # r0's window ending at :30 was missed: the next one's rate fills the 30 s since :15
    answers["r0"] = pod_metrics_object("r0", NS, {"job": ("2", "120Mi")}, "2026-12-03T18:00:45Z")
    answers["r1"] = ApiExceptionLike(404)
    third = read()
    assert third is not None
    assert third.cpu_seconds == pytest.approx(17.5 + 2.0 * 30)  # r1's 10 s stay counted
    assert (third.rss_bytes, third.cpu_cores) == (120 * KI * KI, 2.0)
    assert notes == []  # a pod without metrics among pods with them is not the API missing


class ApiExceptionLike(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"({status})")
        self.status = status


@pytest.mark.unit
def test_the_sampler_publishes_the_apis_rate_as_sys_cpu() -> None:
    """``sys.cpu`` is the rate the API gives, not the integral's steps (which move once a scrape)."""
    clock = Clock()
    reading = Reading(cpu_seconds=30.0, rss_bytes=5, cpu_cores=0.75)
    sampler = ResourceSampler(lambda: reading, 5.0, clock=clock)
    assert sampler.sample() is not None
    clock.now += 5.0
    point = sampler.sample()
    assert point is not None
    assert point.values == {CPU: 0.75, CPU_SECONDS: 30.0, RSS: 5.0}


# -- the client side against kmock, metrics-server stood in -----------------------------------


async def _running_pods(mock: Any, job: dict[str, Any], ranks: int) -> list[str]:
    """The Job controller's and kubelet's part: the attempt's pods, running."""
    labels = job["spec"]["template"]["metadata"]["labels"]
    names = []
    for rank in range(ranks):
        name = f"{job['metadata']['name']}-{rank}-x7k2p"
        body = pod_object(
            name, NS, rank, container="job", image=SAMPLE_IMAGE, labels=labels, run=NodeRun(exit_code=None)
        )
        resp = await mock.post(f"/api/v1/namespaces/{NS}/pods", json=body)
        assert resp.status == 200, await resp.text()
        names.append(name)
    return names


async def _complete(mock: Any, name: str) -> None:
    """The Job controller's part: the Job's Complete condition."""
    body = {"status": {"conditions": [{"type": "Complete", "status": "True", "reason": ""}]}}
    resp = await mock.patch(f"/apis/batch/v1/namespaces/{NS}/jobs/{name}/status", json=body)
    assert resp.status == 200, await resp.text()


async def _until(what: Callable[[], Any], deadline_s: float = 15.0) -> Any:
    end = time.monotonic() + deadline_s
    while not (value := what()):
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.02)
    return value


def _jobs(mock: Any) -> dict[str, dict[str, Any]]:
    return {n: o.raw for (r, _ns, n), o in list(mock.objects.items()) if r.plural == "jobs" and not o.deleted}


@pytest.fixture
async def kube() -> AsyncIterator[tuple[Any, KubernetesBackend]]:
    async with emulator() as mock:
        yield mock, backend_on(mock, KubernetesBackend, OPTS)


@pytest.mark.kubernetes
async def test_a_gangs_pods_are_read_from_the_metrics_api_and_summed(
    kube: tuple[Any, KubernetesBackend], tmp_path: Path
) -> None:
    """Client side only, against kmock with a stand-in for metrics-server: both ranks' PodMetrics
    are read by name through the official client; the reading is their sum, and the CPU seconds
    grow with the next scrape."""
    mock, backend = kube
    attempt = await backend.start(sample_launch(tmp_path, gang=whole_gang(2)), Lines())
    assert isinstance(attempt, KubeAttempt)
    job = await _until(lambda: _jobs(mock).get(attempt.name))
    pods = await _running_pods(mock, job, 2)
    await put_pod_metrics(mock, NS, pods[0], {"job": ("250m", "204800Ki")}, "2026-12-03T18:00:15Z")
    await put_pod_metrics(mock, NS, pods[1], {"job": ("1234567n", "1Gi")}, "2026-12-03T18:00:15Z")
    await _until(lambda: len(attempt._live_pods) == 2)

    first = await asyncio.to_thread(attempt.read_usage)
    assert first is not None
    assert first.rss_bytes == 204800 * KI + 1024 * KI * KI
    assert first.cpu_cores == pytest.approx(0.251234567)
    assert first.cpu_seconds == pytest.approx(0.251234567 * 15)

    await put_pod_metrics(mock, NS, pods[0], {"job": ("1", "204800Ki")}, "2026-12-03T18:00:30Z")
    second = await asyncio.to_thread(attempt.read_usage)
    assert second is not None and second.cpu_seconds == pytest.approx(first.cpu_seconds + 15.0)
    metrics_path = "/apis/metrics.k8s.io/v1beta1/"
    gets = [r for r in list(mock) if r.method.value == "GET" and metrics_path in str(r.url)]
    assert {str(r.url).rsplit("/", 1)[-1] for r in gets} == set(pods)
    ended = {"status": {"phase": "Succeeded"}}  # that rank is done
    resp = await mock.patch(f"/api/v1/namespaces/{NS}/pods/{pods[1]}/status", json=ended)
    assert resp.status == 200, await resp.text()
    await _until(lambda: attempt._live_pods == (pods[0],))  # no more GETs for an ended pod
    await attempt.cancel(0.0)
    outcome = await asyncio.wait_for(attempt.wait(), 30)
    assert outcome.kind == "cancelled"


@pytest.mark.kubernetes
async def test_without_a_metrics_api_there_are_no_samples_one_log_line_and_the_attempt_runs_on(
    kube: tuple[Any, KubernetesBackend], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Client side only, against kmock: no PodMetrics stored (the emulator answers 404, as a
    cluster without metrics-server does): no reading, one log line for many reads, and the
    attempt's outcome is the Job's."""
    mock, backend = kube
    attempt = await backend.start(sample_launch(tmp_path), Lines())
    assert isinstance(attempt, KubeAttempt)
    job = await _until(lambda: _jobs(mock).get(attempt.name))
    await _running_pods(mock, job, 1)
    await _until(lambda: attempt._live_pods)
    with caplog.at_level(logging.INFO, logger="trainyard.executor.kubernetes"):
        readings = [await asyncio.to_thread(attempt.read_usage) for _ in range(NOTE_AFTER * 3)]
    assert readings == [None] * (NOTE_AFTER * 3)
    noted = [r for r in caplog.records if "metrics API" in r.getMessage()]
    assert len(noted) == 1 and getattr(noted[0], "status", None) == 404
    await _complete(mock, attempt.name)
    outcome = await asyncio.wait_for(attempt.wait(), 30)
    assert outcome.kind == "succeeded"
    await attempt.release()


@pytest.mark.kubernetes
@pytest.mark.service
async def test_a_kubernetes_jobs_samples_reach_its_metrics_and_its_record(
    nats_server: Any, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Client side only, against kmock with a stand-in for metrics-server: scheduler and executor
    on a real nats-server; the executor samples the running pod through the metrics API, publishes
    ``sys.*`` points on the job's metrics stream and records the peak and the integrated CPU
    seconds on the attempt."""
    from trainyard_contracts import JobSpec
    from trainyard_executor.app import create_app as executor_app
    from trainyard_executor.kubeemulator import write_kubeconfig
    from trainyard_executor.settings import ExecutorSettings
    from trainyard_scheduler.testkit import quick_scheduler
    from trainyard_shared.testing.helpers import Bus, common_settings, eventually, running

    async with emulator() as mock:
        monkeypatch.setenv(
            "KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", str(mock.url).rstrip("/")))
        )
        monkeypatch.setenv("TRAINYARD_EXECUTOR_BACKEND", "kubernetes")
        settings = ExecutorSettings(
            id="kube-usage",
            cpu=16,
            memory=65536,
            gpu=0,
            kube_namespace=NS,
            heartbeat_seconds=0.5,
            sample_seconds=0.2,
            sample_idle_seconds=0,
        )
        common = common_settings(nats_server.url, prefix, tmp_path / "data")
        spec = JobSpec(
            name="sampled", image=SAMPLE_IMAGE, command=["python", "train.py"], resources={"cpu": 1}
        )
        async with Bus(nats_server.url, prefix) as bus, running(quick_scheduler(common)):
            async with running(executor_app(common, settings)):
                job_id = await bus.submit(spec)
                job = await _until(lambda: next(iter(_jobs(mock).values()), None), deadline_s=30)
                [pod] = await _running_pods(mock, job, 1)
                await put_pod_metrics(mock, NS, pod, {"job": ("500m", "300Mi")}, "2026-12-03T18:00:15Z")

                async def sampled() -> list[dict[str, Any]] | None:
                    msgs = await bus.messages(bus.subjects.metrics(job_id, 1), bus.subjects.streams.metrics)
                    found = [p for m in msgs for p in json.loads(m.data)["points"] if RSS in p["values"]]
                    return found or None

                [point, *_] = await eventually(sampled, 30, "a sys.* point on the job's metrics")
                assert point["values"][RSS] == 300 * KI * KI and point["values"][CPU] == 0.5
                await put_pod_metrics(mock, NS, pod, {"job": ("1", "200Mi")}, "2026-12-03T18:00:30Z")
                await eventually(
                    lambda: _cpu_seconds_reached(bus, job_id, 0.5 * 15 + 15), 30, "the second scrape sampled"
                )
                await _complete(mock, job["metadata"]["name"])
                record = await bus.wait_state(job_id, "succeeded", "failed", "timed_out", "cancelled")
        assert record.state.value == "succeeded", record.reason
        usage = record.attempts[0].usage
        assert usage is not None and usage.peak_memory_bytes == 300 * KI * KI
        assert usage.cpu_seconds == pytest.approx(0.5 * 15 + 15)


async def _cpu_seconds_reached(bus: Any, job_id: str, seconds: float) -> bool:
    msgs = await bus.messages(bus.subjects.metrics(job_id, 1), bus.subjects.streams.metrics)
    points = [p for m in msgs for p in json.loads(m.data)["points"]]
    return any(p["values"].get(CPU_SECONDS, 0) >= seconds for p in points)
