"""The local backend's memory limit (TRAINYARD_EXECUTOR_LOCAL_MEMORY_LIMIT): an attempt whose
processes together hold more resident memory than its spec asks is killed and fails, named out of
memory; one under its limit runs to its end. Real processes: the executor checks every 0.2 s."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from trainyard_contracts import JobSpec
from trainyard_executor.backends import AttemptLaunch, LocalBackend
from trainyard_executor.backends.cgroups import Containment
from trainyard_executor.backends.local.oom import machine_oom_kills, name_oom
from trainyard_executor.testengines import Lines, wait_until
from trainyard_scheduler.testkit import quick_scheduler
from trainyard_shared.testing.helpers import running

from .jobs import PY, executor

pytestmark = [pytest.mark.insight, pytest.mark.local]

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


@pytest.mark.service
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


@pytest.mark.service
async def test_without_the_limit_a_job_may_hold_more_than_it_asked(common, bus):
    """The limit is the executor's choice (off by default): the same job succeeds without it."""
    async with running(quick_scheduler(common)), running(executor(common)):
        held = await bus.submit(job("greedy", 4, "128Mi", 0.5))
        await bus.wait_state(held, "succeeded", timeout=90)


# a rank the kernel's OOM killer takes: SIGKILL, from outside, once the test lets it go
KILLED_FROM_OUTSIDE = (
    "import os, signal, sys, time\n"
    "print('ready', flush=True)\n"
    "go = os.path.join(os.environ['TRAINYARD_WORKDIR'], 'go')\n"
    "deadline = time.time() + 60\n"
    "while not os.path.exists(go) and time.time() < deadline:\n"
    "    time.sleep(0.05)\n"
    "os.kill(os.getpid(), signal.SIGKILL)\n"
)


def oom_launch(tmp_path: Path) -> AttemptLaunch:
    job_id = "job" + uuid.uuid4().hex[:12]
    return AttemptLaunch(
        job_id=job_id,
        attempt=1,
        argv=[PY, "-c", KILLED_FROM_OUTSIDE],
        env={"TRAINYARD_JOB_ID": job_id},
        workdir=tmp_path / "local" / "work" / job_id / "attempt-1",
        timeout_s=60,
        grace_s=2.0,
    )


async def killed(tmp_path: Path, containment: Containment, oom_kill: int | None) -> str:
    """The reason of an attempt whose rank dies of SIGKILL; ``oom_kill``: what the attempt's
    cgroup's ``memory.events`` says by then (None: no such file)."""
    backend = LocalBackend(root=tmp_path / "local", containment=containment)
    launch = oom_launch(tmp_path)
    cgroup = containment.attempt(launch.job_id, launch.attempt)
    if cgroup is not None:  # a directory standing in for cgroupfs: the files the kernel would have
        cgroup.path.mkdir(parents=True)
        (cgroup.path / "cgroup.procs").touch()
        (cgroup.path / "memory.events").write_text(MEMORY_EVENTS.format(oom_kill=0))
    lines = Lines()
    attempt = await backend.start(launch, lines)
    await wait_until(lambda: "ready" in lines.of("stdout"), "the job to start")
    if cgroup is not None and oom_kill is not None:
        (cgroup.path / "memory.events").write_text(MEMORY_EVENTS.format(oom_kill=oom_kill))
    (launch.workdir / "go").touch()
    outcome = await attempt.wait()
    await attempt.release()
    assert outcome.kind == "failed"
    return outcome.reason


# memory.events of a cgroup v2 directory with the memory controller (kernel 6.1's keys)
MEMORY_EVENTS = "low 0\nhigh 0\nmax 3\noom 1\noom_kill {oom_kill}\noom_group_kill 0\n"


@pytest.mark.integration
async def test_the_kernels_oom_kill_counted_in_the_attempts_cgroup_is_named(tmp_path):
    """Without the executor's limit: a rank SIGKILLed while its cgroup's memory.events counts an
    OOM kill failed "out of memory". This machine has no cgroup v2 memory controller, so the
    attempt's cgroup is a directory holding the files the kernel would write (the rank's kill is
    a real SIGKILL); a real kernel counts the kill as the test writes it."""
    containment = Containment("cgroup", root=tmp_path / "cgroupfs")
    reason = await killed(tmp_path, containment, oom_kill=1)
    assert reason == "killed: out of memory (the kernel's OOM killer; memory.events oom_kill 1)"
    # the same kill with nothing counted is a plain SIGKILL
    assert await killed(tmp_path, containment, oom_kill=None) == "killed by signal SIGKILL"


@pytest.mark.unit
def test_without_a_cgroup_only_the_machines_oom_kills_hint_at_it():
    assert name_oom(-9, "killed by signal SIGKILL", None, 1) == (
        "killed by signal SIGKILL; the kernel's OOM killer killed 1 process(es) on this machine while "
        "it ran: out of memory?"
    )
    assert name_oom(-9, "killed by signal SIGKILL", None, 0) == "killed by signal SIGKILL"
    assert name_oom(-9, "killed by signal SIGKILL", 0, 5) == "killed by signal SIGKILL"  # its cgroup: none
    assert name_oom(1, "exit code 1", 2, None) == (
        "exit code 1; the kernel's OOM killer killed 2 of its processes (out of memory)"
    )
    assert name_oom(1, "exit code 1", None, 3) == "exit code 1"  # not a SIGKILL: not the OOM killer
    counted = machine_oom_kills()
    assert counted is None or counted >= 0
