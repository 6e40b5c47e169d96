"""What the live-metrics tests share: the scheduler and executor in this process, and reads of
the metrics stream."""

from __future__ import annotations

import json
import sys
from typing import Any

from trainyard_shared.testing.helpers import Bus

from ..integration.test_job_path import executor as job_path_executor
from ..integration.test_job_path import scheduler

__all__ = ["PY", "batches", "executor", "points", "scheduler"]
PY = sys.executable


def executor(common: Any, name: str = "exec-m", **kw: Any) -> Any:
    """The job-path tests' executor, reading jobs' metrics files five times a second."""
    return job_path_executor(common, name, **{"metrics_flush_seconds": 0.2, **kw})


async def batches(bus: Bus, job_id: str) -> list[dict[str, Any]]:
    msgs = await bus.messages(bus.subjects.metrics_of(job_id), bus.subjects.streams.metrics)
    return [json.loads(m.data) for m in msgs]


async def points(bus: Bus, job_id: str) -> list[dict[str, Any]]:
    return [p for b in await batches(bus, job_id) for p in b["points"]]
