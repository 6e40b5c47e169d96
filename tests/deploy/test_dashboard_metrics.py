"""Every metric the Grafana dashboard queries is one the services really export.

The scheduler, an executor (local processes) and telemetry run in this process on a real
nats-server; one job runs to success; then each service's ``/metrics`` is read over ASGI (the route
Prometheus scrapes) and every metric name in the dashboard's PromQL must be among them.
"""

from __future__ import annotations

import json
import re
import sys

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from trainyard_contracts import JobSpec
from trainyard_executor.app import create_app as executor_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_scheduler.app import create_app as scheduler_app
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_shared.testing.helpers import Bus, common_settings, running
from trainyard_telemetry.app import create_app as telemetry_app

from .natsconf import ROOT

pytestmark = [pytest.mark.service, pytest.mark.local]

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "trainyard.json"
PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "max", "min", "avg", "le", "without",
    "up",  # Prometheus' own per-target metric
}  # fmt: skip
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def dashboard_metrics() -> set[str]:
    """Metric names in the dashboard's expressions (label matchers and strings removed first)."""
    dashboard = json.loads(DASHBOARD.read_text())
    names: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = re.sub(r"\{[^}]*\}", "", target["expr"])  # label matchers
            expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
            expr = re.sub(r"by \([^)]*\)", "", expr)  # grouping labels
            for word in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
                if word not in PROMQL_WORDS:
                    names.add(word)
    return names


def base_name(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


async def exported(app) -> set[str]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    names: set[str] = set()
    for family in text_string_to_metric_families(response.text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


@pytest.mark.unit
def test_the_dashboard_queries_job_metrics_and_bus_metrics():
    names = dashboard_metrics()
    assert "trainyard_jobs" in names and "trainyard_job_events_total" in names
    assert any(n.startswith("faststream_") for n in names)


async def test_every_metric_the_dashboard_queries_is_exported(nats_server, prefix, tmp_path):
    common = common_settings(nats_server.url, prefix, tmp_path / "data")
    scheduler = scheduler_app(common, SchedulerSettings(tick_seconds=0.2))
    executor = executor_app(
        common, ExecutorSettings(id="exec-dash", cpu=2, memory=2048, heartbeat_seconds=0.5)
    )
    telemetry = telemetry_app(common)
    async with running(scheduler), running(executor), running(telemetry), Bus(nats_server.url, prefix) as bus:
        job_id = await bus.submit(JobSpec(name="dash", command=[sys.executable, "-c", "print('ok')"]))
        await bus.wait_state(job_id, "succeeded")
        seen: set[str] = set()
        for app in (scheduler, executor, telemetry):
            seen |= await exported(app)
    wanted = dashboard_metrics()
    missing = sorted(n for n in wanted if n not in seen and base_name(n) not in seen)
    assert not missing, f"the dashboard queries metrics no service exports: {missing}"
