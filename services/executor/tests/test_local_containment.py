"""A local job's processes are contained: a cancel in the rank supervisor's first moments reaches
the job, and a child that leaves the process group (``setsid``) is still stopped on cancel and on
timeout. Real processes and, where the machine has one, a real cgroup v2 hierarchy; no mocks."""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from trainyard_executor.backends import AttemptLaunch, LocalBackend
from trainyard_executor.supervise import SPAWN_DELAY_VAR

pytestmark = [pytest.mark.local, pytest.mark.security]


async def eventually(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def launch_of(tmp_path: Path, argv: list[str], **kw: Any) -> AttemptLaunch:
    job_id = "job" + uuid.uuid4().hex[:12]
    fields: dict[str, Any] = {
        "job_id": job_id,
        "attempt": 1,
        "argv": argv,
        "env": {"TRAINYARD_JOB_ID": job_id},
        "workdir": tmp_path / "work" / job_id / "attempt-1",
        "timeout_s": None,
        "grace_s": 5.0,
    }
    fields.update(kw)
    return AttemptLaunch(**fields)


async def noop_sink(stream: str, line: str) -> None:
    pass


async def test_a_cancel_before_the_job_is_spawned_reaches_it_as_sigterm(tmp_path: Path) -> None:
    """The supervisor is told to wait before it spawns the job (the test hook), and the cancel's
    SIGTERM lands in that wait. Before the fix the supervisor swallowed it: the job started
    anyway and was SIGKILLed at the grace deadline (exit -9). Now the SIGTERM is passed on the
    moment the job exists, so it ends by SIGTERM (the job has not had time to install a handler,
    so the default action ends it: exit -15)."""
    backend = LocalBackend(root=tmp_path / "root")
    script = "import time; time.sleep(60)"
    launch = launch_of(tmp_path, [sys.executable, "-c", script], env={SPAWN_DELAY_VAR: "2"}, grace_s=5.0)
    attempt = await backend.start(launch, noop_sink)
    supervisor_pid_file = launch.workdir / ".trainyard" / "rank-0.pid"
    await eventually(supervisor_pid_file.exists, "the supervisor to record itself (it then waits)")

    await attempt.cancel(5.0)
    outcome = await attempt.wait()

    assert outcome.kind == "cancelled"
    assert outcome.exit_code == -signal.SIGTERM, outcome
