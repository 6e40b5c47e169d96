"""A gang (``replicas: 2``) split across two executors, each with room for one rank.

Scheduler and executors run against a real nats-server; the ranks are real local processes. Rank 0
listens on MASTER_ADDR:MASTER_PORT and rank 1 connects to it (plain sockets, no torch: the torch
all-reduce split across executors is test_split_gang_example.py), so the rendezvous the scheduler
chose is proven to be reachable. The executor that is lost in the last test is a real
``python -m trainyard_executor`` process killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from trainyard_contracts import JobSpec, JobState
from trainyard_executor.app import create_app as executor_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_scheduler.testkit import quick_scheduler

from .harness import Bus, eventually, running

pytestmark = [pytest.mark.service, pytest.mark.local, pytest.mark.distributed]
PY = sys.executable
T = TypeVar("T")

# each rank writes what it saw to <dir>/attempt-<A>-rank-<R>.json, then meets the other rank:
# rank 0 accepts one connection on MASTER_ADDR:MASTER_PORT and reads rank 1's greeting.
# argv: <dir> <mode>; mode "ok" ends after meeting, "fail1" makes rank 1 exit 3 after meeting,
# "hold" keeps both ranks until <dir>/go exists.
RANK = r"""
import json, os, socket, sys, time
out, mode = sys.argv[1], sys.argv[2]
rank, attempt = int(os.environ["RANK"]), os.environ["TRAINYARD_ATTEMPT"]
keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
seen = {k: os.environ.get(k) for k in keys}
seen.update(pid=os.getpid(), cwd=os.getcwd())
with open(os.path.join(out, f"attempt-{attempt}-rank-{rank}.json"), "w") as f:
    json.dump(seen, f)
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
if rank == 0:
    server = socket.create_server((addr, port))
    server.settimeout(60)
    conn, _ = server.accept()
    greeting = conn.recv(64).decode()
    print("rank 0 got:", greeting, flush=True)
    conn.close()
else:
    deadline = time.time() + 60
    while True:
        try:
            conn = socket.create_connection((addr, port), timeout=2)
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
    conn.sendall(f"hello from rank {rank}".encode())
    conn.close()
if mode == "fail1" and rank == 1:
    sys.exit(3)
if mode in ("hold", "fail1"):
    while not os.path.exists(os.path.join(out, "go")):
        time.sleep(0.1)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def executor_settings(name: str, port: int, **kw: Any) -> ExecutorSettings:
    """Room for exactly one rank of the test's jobs (1 CPU, 1 GiB each)."""
    values: dict[str, Any] = {
        "id": name,
        "cpu": 1,
        "memory": 1024,
        "gpu": 0,
        "heartbeat_seconds": 0.5,
        "lease_seconds": 3,
        "grace_seconds": 2,
        "gang_check_seconds": 2,
        # one port, free now: the master port is predictable, and no other test's socket has it
        "rendezvous_port_first": port,
        "rendezvous_port_last": port,
    }
    values.update(kw)
    return ExecutorSettings(**values)


def gang_spec(out: Path, mode: str, **kw: Any) -> JobSpec:
    return JobSpec(
        name=f"split-{mode}",
        command=[PY, "-c", RANK, str(out), mode],
        replicas=2,
        resources={"cpu": 1, "memory": 512},
        **kw,
    )


def seen(out: Path, attempt: int, rank: int) -> dict[str, Any] | None:
    path = out / f"attempt-{attempt}-rank-{rank}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


async def ready(value: Any) -> Any:
    return value


@pytest.fixture
def out(tmp_path: Path) -> Path:
    path = tmp_path / "ranks"
    path.mkdir()
    return path


def scheduler(common):
    return quick_scheduler(common)


async def test_a_gang_split_across_two_executors_runs_and_succeeds(common, bus, out):
    port = free_port()
    a, b = executor_settings("exec-a", port), executor_settings("exec-b", port)
    async with running(scheduler(common)), running(executor_app(common, a)), running(executor_app(common, b)):
        job_id = await bus.submit(gang_spec(out, "ok"))
        done = await explained(
            bus.wait_state(job_id, "succeeded", "failed", "timed_out", timeout=60), bus, job_id
        )
        texts = await bus.log_text(job_id)
        events = await bus.event_types(job_id)
        stored = await bus.messages(bus.subjects.job_events(job_id), bus.subjects.streams.jobs)
    assert done.state == JobState.SUCCEEDED, (done.reason, texts)
    gang = done.gang
    assert gang is not None and gang.attempt == 1 and gang.master_port == port
    scheduled = next(json.loads(m.data) for m in stored if json.loads(m.data)["type"] == "scheduled")
    # the event names every member, rank 0's first (executor_id alone names only rank 0's)
    assert scheduled["executors"] == [m.executor_id for m in gang.members]
    assert scheduled["executor_id"] == gang.members[0].executor_id
    assert gang.master_addr == "127.0.0.1" and gang.world_size == 2
    assert {m.executor_id for m in gang.members} == {"exec-a", "exec-b"}
    assert all(m.state == JobState.SUCCEEDED and m.started_at is not None for m in gang.members)
    master = gang.members[0]
    assert master.ranks == [0] and done.executor_id == master.executor_id  # rank 0's is the record's
    ranks = {rank: seen(out, 1, rank) for rank in (0, 1)}
    for rank, env in ranks.items():
        assert env is not None, rank
        assert env["RANK"] == str(rank) and env["WORLD_SIZE"] == "2", env
        assert env["MASTER_ADDR"] == "127.0.0.1" and env["MASTER_PORT"] == str(port), env
        assert env["LOCAL_RANK"] == "0" and env["LOCAL_WORLD_SIZE"] == "1", env
    by_rank = {m.ranks[0]: m.executor_id for m in gang.members}
    for rank, env in ranks.items():  # each rank ran in its own executor's work dir
        assert f"/executor/{by_rank[rank]}/work/" in env["cwd"], (rank, env["cwd"])
    assert "rank 0 got: hello from rank 1" in " ".join(texts)
    # one event of each, whichever member made the transition
    assert events == ["submitted", "queued", "scheduled", "running", "succeeded"], events


async def test_a_failing_rank_fails_the_gang_stops_the_other_member_and_is_retried(common, bus, out):
    port = free_port()
    a, b = executor_settings("exec-a", port), executor_settings("exec-b", port)
    async with running(scheduler(common)), running(executor_app(common, a)), running(executor_app(common, b)):
        job_id = await bus.submit(gang_spec(out, "fail1", retries={"limit": 1, "backoff": 0}))
        done = await explained(
            bus.wait_state(job_id, "failed", "succeeded", "timed_out", timeout=90), bus, job_id
        )
        # rank 0 of each attempt waited for a "go" that never came: the failure stopped it
        first_rank0 = await eventually(lambda: ready(seen(out, 1, 0)), 10, "attempt 1's rank 0")
        await eventually(lambda: ready(not alive(first_rank0["pid"])), 30, "attempt 1's rank 0 stopped")
        second_rank0 = await eventually(lambda: ready(seen(out, 2, 0)), 10, "attempt 2's rank 0")
        await eventually(lambda: ready(not alive(second_rank0["pid"])), 30, "attempt 2's rank 0 stopped")
        events = await bus.event_types(job_id)
        texts = await bus.log_text(job_id)
    assert done.state == JobState.FAILED and done.attempt == 2 and done.retries_used == 1, done.reason
    assert done.exit_code == 3 and "ranks [1]" in (done.reason or ""), (done.reason, texts)
    assert [a.state for a in done.attempts] == [JobState.REQUEUED, JobState.FAILED]
    assert events.count("running") == 2 and events.count("requeued") == 1, events
    assert events.count("failed") == 1 and events[-1] == "failed", events
    failed = [m for m in done.gang.members if m.state == JobState.FAILED] if done.gang else []
    assert [m.ranks for m in failed] == [[1]] and failed[0].exit_code == 3


class ExecutorProcess:
    """``python -m trainyard_executor`` (local backend), to be killed with SIGKILL: a lost executor."""

    def __init__(self, nats_url: str, prefix: str, data: Path, log: Path, settings: ExecutorSettings):
        self.env = {
            **os.environ,
            "TRAINYARD_NATS_URL": nats_url,
            "TRAINYARD_PREFIX": prefix,
            "TRAINYARD_DATA_DIR": str(data),
            "TRAINYARD_LOG_FORMAT": "text",
            "TRAINYARD_EXECUTOR_PORT": "0",
        }
        for name in (
            "id",
            "cpu",
            "memory",
            "gpu",
            "heartbeat_seconds",
            "lease_seconds",
            "grace_seconds",
            "rendezvous_port_first",
            "rendezvous_port_last",
        ):
            self.env[f"TRAINYARD_EXECUTOR_{name.upper()}"] = str(getattr(settings, name))
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as sink:
            self.proc = subprocess.Popen(
                [PY, "-m", "trainyard_executor"], env=self.env, stdout=sink, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)  # no shutdown hook: it does not deregister
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


async def test_a_lost_member_executor_requeues_the_attempt_and_stops_the_other_member(
    common, bus, out, nats_server, prefix, tmp_path
):
    port = free_port()
    lost = ExecutorProcess(
        nats_server.url,
        prefix,
        tmp_path / "data",
        tmp_path / "lost.log",
        executor_settings("exec-lost", port),
    )
    pids: list[int] = []
    try:
        kept = executor_settings("exec-kept", port)
        async with running(scheduler(common)), running(executor_app(common, kept)):
            lost.start()
            job_id = await bus.submit(gang_spec(out, "hold"))
            await explained(bus.wait_state(job_id, "running", timeout=60), bus, job_id)
            try:
                ranks = [
                    await eventually(lambda r=r: ready(seen(out, 1, r)), 30, f"rank {r}") for r in (0, 1)
                ]
            except AssertionError as exc:
                raise AssertionError(f"{exc}; {await diagnosis(bus, job_id)}") from exc
            pids = [env["pid"] for env in ranks]
            placed = await bus.record(job_id)
            assert placed is not None and placed.gang is not None
            where = {m.executor_id: m.ranks[0] for m in placed.gang.members}
            assert set(where) == {"exec-lost", "exec-kept"}
            lost.kill()
            # its lease (3 s) runs out: the scheduler requeues the attempt (not a retry)
            requeued = await eventually(
                lambda: _requeued(bus, job_id), 60, "the attempt requeued after the executor loss"
            )
            kept_pid = pids[where["exec-kept"]]
            await eventually(lambda: ready(not alive(kept_pid)), 30, "the kept member's rank stopped")
            lost_pid = pids[where["exec-lost"]]
            assert alive(lost_pid)  # the lost executor's rank outlived it (its supervisor's session)
            events = await bus.event_types(job_id)
    finally:
        (out / "go").write_text("")  # whatever still runs ends now
        lost.stop()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert requeued.attempt == 2 and requeued.retries_used == 0
    assert requeued.attempts[0].state == JobState.REQUEUED
    assert "exec-lost" in (requeued.attempts[0].reason or ""), requeued.attempts[0].reason
    assert events.count("requeued") == 1 and events.count("running") == 1, events


async def explained(wait: Awaitable[T], bus: Bus, job_id: str) -> T:
    try:
        return await wait
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {await diagnosis(bus, job_id)}") from exc


async def diagnosis(bus: Bus, job_id: str) -> str:
    """The record and the commands sent, for a failure message."""
    record = await bus.record(job_id)
    stream = bus.subjects.streams.exec
    waiting = (await bus.js.stream_info(stream)).state.messages
    consumers = [
        (c.name, c.num_pending, c.num_ack_pending, c.num_redelivered)
        for c in await bus.js.consumers_info(stream)
    ]
    return f"record: {record.model_dump_json() if record else None}; commands: {waiting} {consumers}"


async def _requeued(bus: Bus, job_id: str) -> Any:
    record = await bus.record(job_id)
    return record if record is not None and record.attempt >= 2 else None
