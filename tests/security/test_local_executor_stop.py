"""Nothing a local job started outlives its executor's stop: the executor hands the attempt back
to the queue and its whole cgroup goes, a child that left the job's process group included.

The scheduler and the executor are the real services on a real nats-server (in this process, so
leaving ``running()`` is the executor's real shutdown, as on Ctrl-C of ``trainyard up``); the job
and its ``setsid()`` grandchild are real processes.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from trainyard_contracts import JobSpec
from trainyard_executor.app import create_app as executor_app
from trainyard_executor.testkit import quick_executor_settings
from trainyard_scheduler.testkit import quick_scheduler
from trainyard_shared.testing.helpers import eventually, running

pytestmark = [pytest.mark.security, pytest.mark.service, pytest.mark.local]
PY = sys.executable


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


async def test_stopping_the_executor_stops_a_jobs_setsid_child_and_hands_the_job_back(common, bus, tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    child = (
        f"import os, time; os.setsid(); open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    )
    job = (
        f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(300)"
    )
    scheduler = quick_scheduler(common)
    executor = executor_app(
        common,
        quick_executor_settings("exec-stop", lease_seconds=15, grace_seconds=1),
    )
    grandchild = None
    try:
        async with running(scheduler):
            async with running(executor):
                job_id = await bus.submit(JobSpec(name="leaves-a-daemon", command=[PY, "-c", job]))
                await bus.wait_state(job_id, "running")

                async def started() -> bool:
                    return pid_file.exists() and pid_file.read_text().strip() != ""

                await eventually(started, 30, "the setsid grandchild")
                grandchild = int(pid_file.read_text())
                assert alive(grandchild)
            # the executor has stopped
            record = await bus.wait_state(job_id, "requeued", "queued", timeout=30)

            async def gone() -> bool:
                return not alive(grandchild)

            await eventually(gone, 10, "the grandchild gone with its executor")
        assert record.attempt == 2 and record.retries_used == 0  # handed back, not a retry
    finally:
        if grandchild is not None and alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)
