"""`trainyard up` supervises its processes: Ctrl-C stops everything within the stack's deadline and
hands running attempts back; a process that crashes is restarted with backoff; one that keeps
crashing stops the stack (issue 14).

Real parts: `trainyard up` as a child process, nats-server and the five services below it, jobs as
local processes that write what happens to them into a marker file.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from trainyard_client.stack import EmbeddedStack
from trainyard_client.supervision import RestartPolicy
from trainyard_client.uptest import Up, alive, free_block, process_tree, until

pytestmark = [pytest.mark.stack, pytest.mark.local, pytest.mark.timeout(900)]

CHECKPOINT_SECONDS = 6
COHOSTED = "-m trainyard_shared.cohost"
"""The command line of the process hosting the registry, telemetry and the workflow service."""
# A job that, told to stop, takes CHECKPOINT_SECONDS to save its work (as a training job saving a
# checkpoint does) and then exits; its second attempt just finishes.
JOB_CODE = f"""
import os, signal, sys, time
marker = sys.argv[1]
job, attempt = os.environ['TRAINYARD_JOB_ID'], os.environ['TRAINYARD_ATTEMPT']
def mark(kind):
    fd = os.open(marker, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f'{{kind}} {{job}} {{attempt}} {{os.getpid()}}\\n'.encode())
    os.close(fd)
def on_term(signum, frame):
    mark('term')
    time.sleep({CHECKPOINT_SECONDS})
    mark('checkpointed')
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
mark('start')
if attempt != '1':
    mark('end')
    sys.exit(0)
while True:
    time.sleep(0.1)
"""


def _spec(n: int, marker: Path) -> dict:
    return {
        "name": f"checkpointing-{n}",
        "command": [sys.executable, "-c", JOB_CODE, str(marker)],
        "resources": {"cpu": 0.1, "memory": "64Mi"},
    }


def _marks(marker: Path) -> list[tuple[str, str, str, int]]:
    """(kind, job, attempt, pid) of every line the jobs wrote."""
    if not marker.exists():
        return []
    rows = [line.split() for line in marker.read_text().splitlines()]
    return [(kind, job, attempt, int(pid)) for kind, job, attempt, pid in rows]


def _ports() -> tuple[int, int]:
    base = free_block(7)
    return base, base + 6


def _interrupt_and_check_clean_stop(up: Up, below: dict[int, str], timeout: float) -> str:
    """SIGINT to `trainyard up`; it exits 0 within ``timeout`` saying it stopped, and nothing of
    ``below`` (its process tree before) is left running. Returns its console."""
    try:
        up.signal(signal.SIGINT)
        code = up.wait(timeout=timeout)
    finally:
        up.kill()
    console = up.console()
    assert code == 0, console
    assert "Trainyard stopped" in console, console
    still = {pid: cmd for pid, cmd in below.items() if alive(pid)}
    assert not still, f"left running after `trainyard up` exited: {still}\n{console}"
    return console


def test_ctrl_c_stops_every_job_in_parallel_and_hands_it_back_before_the_stack_exits(tmp_path):
    """Two running jobs that each take 6 s to stop: stopped one after the other (the old executor)
    they outlast the stack's deadline for the executor and the second keeps running after
    "Trainyard stopped". Now both are told at once, the executor hands both back, then exits."""
    data, marker = tmp_path / "data", tmp_path / "marker"
    api_port, nats_port = _ports()
    up = Up(data, api_port, nats_port).start()
    try:
        with up.client() as client:
            jobs = [client.submit(_spec(n, marker)).job_id for n in range(2)]
            until(
                lambda: {m[1] for m in _marks(marker) if m[0] == "start"} == set(jobs), 120, "both jobs run"
            )
            until(
                lambda: all(client.get(j).state.value == "running" for j in jobs), 30, "both recorded running"
            )
        below = process_tree(up.pid)
        job_pids = {m[3] for m in _marks(marker) if m[0] == "start"}
        assert job_pids <= set(below), "the jobs run below `trainyard up`"
    except BaseException:
        up.kill()
        raise
    console = _interrupt_and_check_clean_stop(up, below, timeout=60)
    marks = _marks(marker)
    for job in jobs:  # each job was told to stop, and had its time to save its work
        assert ("term", job, "1") in [m[:3] for m in marks], marks
        assert ("checkpointed", job, "1") in [m[:3] for m in marks], marks
    assert "did not stop within" not in console and "still running after" not in console, console

    up = Up(data, api_port, nats_port).start()  # the attempts were handed back: they run again
    try:
        with up.client() as client:
            for job in jobs:
                record = client.wait(job, timeout=120)
                assert record.state.value == "succeeded", record
                first = record.attempts[0]
                assert first.state is not None and first.state.value == "requeued", record.attempts
                assert first.reason == "executor shut down while the attempt ran", record.attempts
                assert record.attempt == 2
        up.signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0, up.console()
    finally:
        up.kill()


def test_up_started_with_sigint_ignored_stops_on_sigint_as_on_sigterm(tmp_path):
    """`trainyard up &` in a script: the shell starts it with SIGINT ignored and Python then
    installs no KeyboardInterrupt, so Ctrl-C / `kill -INT` did nothing (only SIGTERM stopped it).
    It installs its own SIGINT handler: the same clean stop, nothing left running below it."""
    api_port, nats_port = _ports()
    up = Up(tmp_path / "data", api_port, nats_port, sigint_ignored=True).start()
    try:
        below = process_tree(up.pid)
        assert any("nats-server" in cmd for cmd in below.values()), below
    except BaseException:
        up.kill()
        raise
    _interrupt_and_check_clean_stop(up, below, timeout=120)


def test_a_service_or_nats_killed_is_restarted_and_the_stack_keeps_serving(tmp_path):
    data = tmp_path / "data"
    api_port, nats_port = _ports()
    up = Up(data, api_port, nats_port).start()
    try:
        executor = up.child_pid("-m trainyard_executor")
        assert executor is not None
        os.kill(executor, signal.SIGKILL)
        until(lambda: up.said("the executor service exited (code -9); restarting it in 1s"), 30, "said")
        assert up.said("(restart 1 of 5 within 60s)"), up.console()
        restarted = until(
            lambda: (pid := up.child_pid("-m trainyard_executor")) not in (None, executor) and pid,
            30,
            "restart",
        )
        nats = up.child_pid("nats-server")
        assert nats is not None
        os.kill(nats, signal.SIGKILL)
        until(lambda: up.said("the nats service exited (code -9)"), 30, "nats restart said")
        until(lambda: up.child_pid("nats-server") not in (None, nats), 60, "nats restarted")
        with up.client() as client:
            job = until(lambda: _submit_when_up(client), 120, "the API answers again")
            record = client.wait(job, timeout=120)
            assert record.state.value == "succeeded", record
            assert record.attempts[-1].executor_id is not None
        assert up.child_pid("-m trainyard_executor") == restarted  # it kept running once back
        up.signal(signal.SIGINT)
        code = up.wait(timeout=60)
    finally:
        up.kill()
    assert code == 0, up.console()
    assert "Trainyard stopped" in up.console() and "a service failed" not in up.console()


def _submit_when_up(client) -> str | None:
    import httpx

    spec = {"name": "after-a-crash", "command": [sys.executable, "-c", "print('still serving')"]}
    try:
        return client.submit(spec).job_id
    except httpx.HTTPError:
        return None


def test_a_service_that_keeps_dying_stops_the_stack_after_its_restarts(tmp_path):
    data = tmp_path / "data"
    api_port, nats_port = _ports()
    up = Up(data, api_port, nats_port, "--max-restarts", "2").start()
    try:
        killed: list[int] = []
        for _ in range(3):
            pid = until(
                lambda: (p := up.child_pid("-m trainyard_shared.cohost")) not in (None, *killed) and p,
                60,
                "up",
            )
            below = process_tree(up.pid)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        code = up.wait(timeout=90)
    finally:
        up.kill()
    console = up.console()
    assert code == 1, console
    # telemetry runs in one process with the registry and the workflow service (co-hosted)
    assert console.count("the registry+telemetry+workflow service exited (code -9); restarting it in") == 2, (
        console
    )
    assert "(restart 2 of 2 within 60s)" in console
    assert "it exited again after 2 restart(s) within 60s: stopping" in console
    assert "Trainyard stopped (a service failed)" in console
    assert not [pid for pid in below if alive(pid)], console


def test_the_executor_grace_must_fit_in_the_stack_stop_timeout(tmp_path):
    stack = EmbeddedStack(tmp_path, api_port=None, nats_port=None, stop_timeout=12, env={})
    with pytest.raises(Exception, match=r"job grace \(10s.*stop timeout \(12s\)"):
        stack.start()
    assert stack.service_env()["TRAINYARD_EXECUTOR_GRACE_SECONDS"] == "10.0"
    fits = EmbeddedStack(
        tmp_path,
        api_port=None,
        nats_port=None,
        stop_timeout=12,
        env={"TRAINYARD_EXECUTOR_GRACE_SECONDS": "2"},
    )
    fits._check_deadlines()


def test_an_embedded_stack_with_a_restart_policy_restarts_and_lists_what_it_restarted(tmp_path):
    heard: list[tuple[str, int | None]] = []
    stack = EmbeddedStack(
        tmp_path / "data",
        api_port=None,
        nats_port=None,
        ready_timeout=600,
        restart_policy=RestartPolicy(limit=3, backoff_seconds=(0.5,)),
        on_restart=lambda restart, tail: heard.append((restart.service, restart.exit_code)),
    )
    with stack:
        victim = stack.services["telemetry"].process
        assert victim is not None
        victim.kill()
        until(lambda: stack.services["telemetry"].process is not victim, 30, "telemetry restarted")
        until(lambda: stack.healthy()["telemetry"], 300, "telemetry healthy again")
        stack.raise_if_failed()  # one restart is no failure
        group = "registry+telemetry+workflow"  # telemetry's process hosts the three (co-hosted)
        assert [(r.service, r.exit_code, r.number) for r in stack.restarts] == [(group, -9, 1)]
        assert heard == [(group, -9)]
        assert stack.healthy()["registry"] and stack.healthy()["workflow"]
    assert not stack.services["telemetry"].alive and not stack.leftovers


def test_with_the_fork_server_jobs_run_through_it_and_the_stack_stops_leaving_nothing(tmp_path):
    """`trainyard up` as it comes (the fork server on by default): the executor's ranks are forked
    by its fork server, and the executor closes the fork server when it stops, so the stop finds
    no process left behind (docs/executors.md, "The fork server")."""
    stack = EmbeddedStack(tmp_path / "data", api_port=None, nats_port=None, ready_timeout=600)
    with stack:
        with stack.client() as client:
            spec = {"name": "forked", "command": ["true"]}
            done = client.wait(client.submit(spec).job_id, timeout=300)
        assert done.state == "succeeded", done.reason
        executor = stack.services["executor"].process
        assert executor is not None
        servers = [pid for pid, command in process_tree(executor.pid).items() if "forkserver.py" in command]
        assert len(servers) == 1  # the rank went through it
    assert not stack.killed_services and not stack.leftovers
