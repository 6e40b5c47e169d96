"""The log bounds on the real job path: scheduler and executor in this process, jobs as local
processes, a real nats-server (default ``max_payload``, 1 MiB). A job printing 200 lines of 64 KiB
gets every line; a job printing past the executor's per-attempt cap gets one truncation marker;
a third job's logs, running beside them, are intact."""

from __future__ import annotations

import sys

import pytest

from trainyard_contracts import JobSpec
from trainyard_executor.app import create_app as executor_app
from trainyard_executor.testkit import quick_executor_settings
from trainyard_scheduler.testkit import quick_scheduler
from trainyard_shared.testing.helpers import running

from .logread import final_log_lines

pytestmark = [pytest.mark.security, pytest.mark.service, pytest.mark.local]
PY = sys.executable
CAP = 16 * 1024 * 1024


async def test_big_lines_arrive_whole_a_flood_is_capped_and_neighbours_are_intact(common, bus):
    scheduler = quick_scheduler(common)
    executor = executor_app(
        common,
        quick_executor_settings("exec-logs", log_max_bytes_per_attempt=CAP),
    )
    big = "import sys\nfor i in range(200): sys.stdout.write('%04d' % i + 'x' * (65536 - 4) + '\\n')"
    flood = "import sys\nfor i in range(40 * 1024): sys.stdout.write('f' * 1023 + '\\n')"
    quiet = "for i in range(100): print('quiet', i)"
    async with running(scheduler), running(executor):
        jobs = {
            name: await bus.submit(JobSpec(name=name, command=[PY, "-c", code]))
            for name, code in (("big", big), ("flood", flood), ("quiet", quiet))
        }
        for job_id in jobs.values():
            await bus.wait_state(job_id, "succeeded", timeout=120)
    big_lines = [t for t in await final_log_lines(bus, jobs["big"]) if not t.startswith("attempt")]
    assert big_lines == [f"{i:04d}" + "x" * (65536 - 4) for i in range(200)]
    flood_lines = await final_log_lines(bus, jobs["flood"])
    assert flood_lines.count(f"[trainyard: output truncated after {CAP} bytes]") == 1
    assert sum(len(t) for t in flood_lines if t.startswith("fff")) <= CAP
    assert any("dropped after the cap" in t for t in flood_lines)
    quiet_lines = [t for t in await final_log_lines(bus, jobs["quiet"]) if t.startswith("quiet")]
    assert quiet_lines == [f"quiet {i}" for i in range(100)]
