"""The local backend's memory limit (TRAINYARD_EXECUTOR_LOCAL_MEMORY_LIMIT): an attempt whose
processes together hold more resident memory than its spec asks is killed and fails, named out of
memory; one under its limit runs to its end. Real processes: the executor checks every 0.2 s."""

from __future__ import annotations

import pytest

from trainyard_contracts import JobSpec
from trainyard_scheduler.testkit import quick_scheduler
from trainyard_shared.testing.helpers import running

from .jobs import PY, executor

pytestmark = [pytest.mark.insight, pytest.mark.service, pytest.mark.local]

HOLDS_200_MIB = (
    "import time\n"
    "blocks = [bytearray(b'x') * (50 * 1024 * 1024) for _ in range({n})]  # written: resident\n"
    "time.sleep({sleep})\n"
)


def job(name: str, n: int, memory: str, sleep: float) -> JobSpec:
    return JobSpec(
        name=name,
        command=[PY, "-c", HOLDS_200_MIB.format(n=n, sleep=sleep)],
        resources={"memory": memory},
    )


async def test_an_attempt_over_its_memory_is_killed_and_named_out_of_memory(common, bus):
    async with (
        running(quick_scheduler(common)),
        running(executor(common, local_memory_limit=True, local_memory_check_seconds=0.2)),
    ):
        over = await bus.submit(job("greedy", 4, "128Mi", 120))  # 200 MiB held, 128 MiB asked
        under = await bus.submit(job("modest", 1, "512Mi", 1))  # 50 MiB held, 512 MiB asked
        await bus.wait_state(over, "failed", timeout=90)
        await bus.wait_state(under, "succeeded", timeout=90)
        record = await bus.record(over)
        assert record is not None and record.reason is not None
        assert "out of memory" in record.reason and "limit of 128 MiB" in record.reason, record.reason


async def test_without_the_limit_a_job_may_hold_more_than_it_asked(common, bus):
    """The limit is the executor's choice (off by default): the same job succeeds without it."""
    async with running(quick_scheduler(common)), running(executor(common)):
        held = await bus.submit(job("greedy", 4, "128Mi", 0.5))
        await bus.wait_state(held, "succeeded", timeout=90)
