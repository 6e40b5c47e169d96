"""What trainyard.report costs (``pytest -m bench -s services/executor/tests/test_metrics_bench.py``).

The job's side: ``report()`` calls of the real reporter module. The executor's side: the CPU its
process spends reading the metrics file, parsing, batching and publishing those reports to a real
nats-server (the acks awaited), and how many messages that makes. Printed as JSON; no assertion on
time (the numbers go to docs/insight.md).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import time
from pathlib import Path
from types import ModuleType

import pytest
from faststream.nats import NatsBroker

from trainyard_contracts import Subjects
from trainyard_executor.attemptstream import AttemptStream
from trainyard_executor.backends.jobmetrics import REPORTER
from trainyard_executor.metricship import MetricsShipper
from trainyard_shared.bus import ensure_streams

pytestmark = [pytest.mark.bench, pytest.mark.insight]


async def _note(text: str) -> None:
    return None


def load_reporter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The real reporter module (what a job imports), writing to a metrics file in ``tmp_path``."""
    spec = importlib.util.spec_from_file_location("trainyard_reporter_bench", REPORTER)
    assert spec is not None and spec.loader is not None
    reporter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reporter)
    monkeypatch.setenv("TRAINYARD_METRICS_FILE", str(tmp_path / ".trainyard-metrics.jsonl"))
    return reporter


@pytest.mark.parametrize("reports", [1000, 10_000])
async def test_cost_of_reports(nats_server, prefix, tmp_path, monkeypatch, reports):
    reporter = load_reporter(tmp_path, monkeypatch)
    subjects = Subjects(prefix)
    async with NatsBroker(nats_server.url) as broker:
        await broker.start()
        await ensure_streams(broker, subjects)
        shipper = MetricsShipper(
            AttemptStream.of(broker, subjects, "metrics", "benchjob", 1), tmp_path, _note
        )
        shipper.start()
        job_cpu = time.process_time()
        for step in range(reports):
            reporter.report(step, loss=1.0 / (step + 1), accuracy=step / reports, lr=0.001)
        job_cpu = time.process_time() - job_cpu
        executor_cpu = time.process_time()
        await shipper.stop()  # reads what is left, publishes, waits for the acks
        executor_cpu = time.process_time() - executor_cpu
    result = {
        "reports": reports,
        "values_per_report": 3,
        "messages": shipper.published,
        "points_stored": shipper.points,
        "job_cpu_ms_per_1000_reports": round(job_cpu * 1000 * 1000 / reports, 2),
        "executor_cpu_ms_per_1000_reports": round(executor_cpu * 1000 * 1000 / reports, 2),
    }
    print(json.dumps(result))
    # a burst over the rate limit (max_points per look) is thinned, evenly, the last point kept
    assert 0 < shipper.points <= reports
    assert shipper.points == reports or reports > shipper.ship.max_points


async def test_cost_of_paced_reports_and_of_sampling(nats_server, prefix, tmp_path, monkeypatch):
    """The path a running job takes: 1,000 reports spread over ~4 s while the shipper's own loop
    looks every second (flush_seconds 1, the default) and publishes to a real nats-server, with the
    resource sampler on (5 s, the default, reading this process's group from /proc). Shortcut: the
    job's calls run in this process rather than a child, so its CPU is the report calls' own
    thread time, and the executor's is this process's CPU less that and less the pacing loop's own
    (measured alone first); the rest of an executor (heartbeats, log shipping) is not running."""
    from trainyard_executor.metricship import ShipLimits
    from trainyard_executor.sampling import ResourceSampler, read_process_groups

    reporter = load_reporter(tmp_path, monkeypatch)
    subjects = Subjects(prefix)
    reports = 1000
    idle = time.process_time()  # the pacing loop alone (subtracted: it is not the executor's)
    for _ in range(reports):
        await asyncio.sleep(0.004)
    idle = time.process_time() - idle
    group = os.getpgid(0)
    sampler = ResourceSampler(lambda: read_process_groups([group, -1]), every_seconds=5.0)
    async with NatsBroker(nats_server.url) as broker:
        await broker.start()
        await ensure_streams(broker, subjects)
        shipper = MetricsShipper(
            AttemptStream.of(broker, subjects, "metrics", "pacedjob", 1),
            tmp_path,
            _note,
            ship=ShipLimits(flush_seconds=1.0),
            sampler=sampler,
        )
        shipper.start()
        started, cpu_before = time.monotonic(), time.process_time()
        job_cpu = 0.0
        for step in range(reports):
            before = time.thread_time()
            reporter.report(step, loss=1.0 / (step + 1), accuracy=step / reports, lr=0.001)
            job_cpu += time.thread_time() - before
            await asyncio.sleep(0.004)  # ~250 reports a second
        await shipper.stop()
        seconds = time.monotonic() - started
        executor_cpu = time.process_time() - cpu_before - job_cpu - idle
    scan = time.process_time()
    for _ in range(20):
        read_process_groups([group])
    scan = (time.process_time() - scan) / 20
    result = {
        "reports": reports,
        "seconds": round(seconds, 1),
        "messages": shipper.published,
        "points_stored": shipper.points,
        "job_cpu_ms_per_1000_reports": round(job_cpu * 1000, 2),
        "executor_cpu_ms_per_1000_reports": round(executor_cpu * 1000 * 1000 / reports, 2),
        "processes_on_machine": sum(1 for name in os.listdir("/proc") if name.isdigit()),
        "sample_cpu_ms": round(scan * 1000, 2),
        "pacing_loop_cpu_ms_subtracted": round(idle * 1000, 2),
    }
    print(json.dumps(result))
    assert shipper.points >= reports  # every report (and a sample or more) stored
