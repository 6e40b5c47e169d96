"""A local job's processes are contained: a cancel in the rank supervisor's first moments reaches
the job, and a child that leaves the process group (``setsid``) is still stopped on cancel and on
timeout. Real processes and, where the machine has one, a real cgroup v2 hierarchy; no mocks."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from trainyard_executor.backends import AttemptLaunch, LocalBackend
from trainyard_executor.supervise import SPAWN_DELAY_VAR
from trainyard_executor.testengines import pid_alive, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.local, pytest.mark.security]


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
    await wait_until(supervisor_pid_file.exists, "the supervisor to record itself (it then waits)")

    await attempt.cancel(5.0)
    outcome = await attempt.wait()

    assert outcome.kind == "cancelled"
    assert outcome.exit_code == -signal.SIGTERM, outcome


def setsid_script(pid_file: Path) -> list[str]:
    """A job whose child leaves the job's process group and session, says so, and sleeps."""
    child = (
        f"import os, time; os.setsid(); open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    )
    script = f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", {child!r}])
        time.sleep(120)
    """
    return [sys.executable, "-c", textwrap.dedent(script)]


@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_a_child_that_calls_setsid_is_stopped_with_the_job(tmp_path: Path, how: str) -> None:
    """The grandchild is in no process group the executor signals; before the fix it outlived
    both a cancel and a timeout. The attempt's cgroup (or, without one, the fallback the backend
    reports) takes it down."""
    backend = LocalBackend(root=tmp_path / "root")
    if backend.containment.kind != "cgroup":
        pytest.skip(f"no cgroup here: {backend.containment.reason}")
    pid_file = tmp_path / f"grandchild-{how}.pid"
    launch = launch_of(tmp_path, setsid_script(pid_file), timeout_s=3.0 if how == "timeout" else None)
    attempt = await backend.start(launch, noop_sink)
    await wait_until(lambda: pid_file.exists() and pid_file.read_text().strip() != "", "the grandchild")
    grandchild = int(pid_file.read_text())
    assert pid_alive(grandchild)
    try:
        if how == "cancel":
            await attempt.cancel(1.0)
        outcome = await attempt.wait()
        assert outcome.kind == ("cancelled" if how == "cancel" else "timed_out")
        await wait_until(lambda: not pid_alive(grandchild), "the setsid grandchild to be gone", 10.0)
        cgroup = backend.containment.attempt(launch.job_id, launch.attempt)
        assert cgroup is not None and not cgroup.path.exists()  # removed once empty
    finally:
        if pid_alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)


async def test_a_restarted_executor_that_discards_an_attempt_stops_its_setsid_child(tmp_path: Path) -> None:
    """An executor that went away (``detach``) and came back finds an attempt that is no longer
    current and discards it: the cgroup named in its pid file is killed, escapees included."""
    backend = LocalBackend(root=tmp_path / "root")
    if backend.containment.kind != "cgroup":
        pytest.skip(f"no cgroup here: {backend.containment.reason}")
    pid_file = tmp_path / "grandchild.pid"
    attempt = await backend.start(launch_of(tmp_path, setsid_script(pid_file)), noop_sink)
    await wait_until(lambda: pid_file.exists() and pid_file.read_text().strip() != "", "the grandchild")
    grandchild = int(pid_file.read_text())
    await attempt.detach()
    try:
        restarted = LocalBackend(root=tmp_path / "root")
        (found,) = await restarted.find_attempts()
        await restarted.discard(found, grace_s=1.0)
        await wait_until(lambda: not pid_alive(grandchild), "the setsid grandchild to be gone", 10.0)
    finally:
        if pid_alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)
