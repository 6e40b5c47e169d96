"""What the live-metrics tests share: an executor that reads reports often, and reads of the
metrics stream."""

from __future__ import annotations

import json
import sys
from typing import Any

from trainyard_executor.testkit import quick_executor
from trainyard_shared.testing.helpers import Bus

PY = sys.executable


def executor(common: Any, name: str = "exec-m", **kw: Any) -> Any:
    # sampling off unless asked for: the tests that count points see the job's own only
    return quick_executor(common, name, metrics_flush_seconds=0.2, **{"sample_seconds": 0.0, **kw})


async def batches(bus: Bus, job_id: str) -> list[dict[str, Any]]:
    msgs = await bus.messages(bus.subjects.metrics_of(job_id), bus.subjects.streams.metrics)
    return [json.loads(m.data) for m in msgs]


async def points(bus: Bus, job_id: str) -> list[dict[str, Any]]:
    return [p for b in await batches(bus, job_id) for p in b["points"]]
