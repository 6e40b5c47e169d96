"""What the live-metrics tests share: the scheduler and executor in this process, and reads of
the metrics stream.

The scheduler and executor are made here, not imported from tests/integration/test_job_path.py:
a relative import of another tests package fails when pytest (importlib mode) has already bound
the name ``tests`` to services/submission/tests in a full run."""

from __future__ import annotations

import json
import sys
from typing import Any

from trainyard_executor.app import create_app as executor_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_scheduler.app import create_app as scheduler_app
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_shared.testing.helpers import Bus

PY = sys.executable


def scheduler(common: Any) -> Any:
    return scheduler_app(common, SchedulerSettings(tick_seconds=0.2, submitted_grace_seconds=1))


def executor(common: Any, name: str = "exec-m", **kw: Any) -> Any:
    settings = ExecutorSettings(
        id=name,
        cpu=4,
        memory=8192,
        gpu=0,
        heartbeat_seconds=0.5,
        lease_seconds=3,
        grace_seconds=2,
        metrics_flush_seconds=0.2,
        **kw,
    )
    return executor_app(common, settings)


async def batches(bus: Bus, job_id: str) -> list[dict[str, Any]]:
    msgs = await bus.messages(bus.subjects.metrics_of(job_id), bus.subjects.streams.metrics)
    return [json.loads(m.data) for m in msgs]


async def points(bus: Bus, job_id: str) -> list[dict[str, Any]]:
    return [p for b in await batches(bus, job_id) for p in b["points"]]
