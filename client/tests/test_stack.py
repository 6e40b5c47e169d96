"""The embedded stack for real: nats-server and the six services as child processes.

Skipped when the service packages are not installed (the ``stack`` extra). Slow: the registry
imports MLflow, so each start takes ~10 s.
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trainyard_client import TrainyardClient
from trainyard_client.stack import SERVICES, EmbeddedStack, ServiceDied
from trainyard_client.stackprocess import port_in_use

pytestmark = [
    pytest.mark.stack,
    pytest.mark.skipif(
        importlib.util.find_spec("trainyard_scheduler.__main__") is None,
        reason="the service packages (trainyard-client[stack]) are not installed",
    ),
]

HELLO = {
    "name": "hello",
    "command": [sys.executable, "-c", "print('hello from a trainyard job')"],
    "resources": {"cpu": 0.1, "memory": "64Mi"},
}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie has exited too
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_embedded_stack_runs_a_job_and_keeps_it_across_a_restart(tmp_path):
    data = tmp_path / "data"
    with EmbeddedStack(data, api_port=None, nats_port=None) as stack:
        assert stack.token_file.exists()
        assert all(stack.healthy().values())
        with stack.client() as client:
            job_id = client.submit(HELLO).job_id
            record = client.wait(job_id, timeout=120)
            assert record.state.value == "succeeded", record
            assert "hello from a trainyard job" in client.logs(job_id)
        pids = [s.process.pid for s in stack.services.values()]
        nats_pid = stack.nats.process.pid
    assert all(_gone(pid) for pid in [*pids, nats_pid])
    for name in stack.processes:  # the co-hosted services write one log
        assert (data / "logs" / f"{name}.log").stat().st_size > 0
    assert set(stack.services) == set(SERVICES)
    assert str(data / "mlflow" / "mlflow.db") in stack.mlflow_tracking_uri

    with EmbeddedStack(data, api_port=None, nats_port=None) as again:  # other ports, same data
        with again.client() as client:
            assert client.get(job_id).state.value == "succeeded"
            assert job_id in [row.job_id for row in client.list()]
        victim = again.services["telemetry"].process
        victim.kill()
        victim.wait()
        with pytest.raises(ServiceDied) as caught:
            again.raise_if_dead()
        # telemetry shares its process with the registry and the workflow service (co-hosted)
        assert caught.value.name == "registry+telemetry+workflow"
        assert [s.name for s in caught.value.dead] == ["registry+telemetry+workflow"]


def _free_block(size: int) -> int:
    """The first of ``size`` consecutive free ports, below the usual ephemeral range."""
    for base in random.sample(range(20000, 30000, 10), 200):
        if not any(port_in_use("127.0.0.1", port) for port in range(base, base + size)):
            return base
    raise AssertionError("no block of free ports")


def _children(pid: int) -> dict[int, str]:
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        # a thread (or a child) may end between the listing and the read: what is gone is no child
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in children:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except FileNotFoundError:
                continue
            found[int(child)] = cmdline
    return found


def _stop(proc: subprocess.Popen[str]) -> None:
    """Stops a `trainyard up` a failed test left running: SIGTERM first, so it stops its
    services (a SIGKILL would orphan nats-server and the six services), SIGKILL if it hangs."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _start_up(
    data: Path, api_port: int, nats_port: int, *args: str
) -> tuple[subprocess.Popen[str], list[str]]:
    env = {**os.environ, "COLUMNS": "200", "TRAINYARD_DATA_DIR": str(data)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainyard_client.cli", "up", "--data-dir", str(data),
         "--api-port", str(api_port), "--nats-port", str(nats_port), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:  # blocks until the stack prints its banner (or exits: EOF)
        lines.append(line)
        if "Trainyard is up" in line:
            return proc, lines
    proc.wait()
    raise AssertionError("`trainyard up` did not start:\n" + "".join(lines))


def test_trainyard_up_serves_stops_on_sigterm_and_stops_everything_when_a_service_dies(tmp_path):
    """With --max-restarts 0, as every crash did before `up` restarted its services."""
    data = tmp_path / "data"
    base = _free_block(7)
    api_port, nats_port = base, base + 6
    proc, _ = _start_up(data, api_port, nats_port)
    try:
        children = _children(proc.pid)
        # nats-server, submission, scheduler, executor, and one process for the other three
        assert len(children) == 5, children
        cohosted = "trainyard_shared.cohost registry telemetry workflow"
        assert sum(cohosted in cmd for cmd in children.values()) == 1, children
        with TrainyardClient(f"http://127.0.0.1:{api_port}", (data / "api-token").read_text().strip()) as c:
            assert c.health()
            job_id = c.submit(HELLO).job_id
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode == 0, rest
    assert "Trainyard stopped" in rest
    assert all(_gone(pid) for pid in children)

    # same data dir: the job is still there. --max-restarts 0: the first exit stops the stack
    # (by default a crashed service is restarted: tests/stack/test_up_stop_and_restart.py)
    proc, _ = _start_up(data, api_port, nats_port, "--max-restarts", "0")
    try:
        with TrainyardClient(f"http://127.0.0.1:{api_port}", (data / "api-token").read_text().strip()) as c:
            assert c.get(job_id).job_id == job_id
        children = _children(proc.pid)
        (scheduler,) = [pid for pid, cmd in children.items() if "trainyard_scheduler" in cmd]
        os.kill(scheduler, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode == 1, rest
    assert "the scheduler service exited" in rest
    assert "Trainyard stopped (a service failed)" in rest
    assert all(_gone(pid) for pid in children)
