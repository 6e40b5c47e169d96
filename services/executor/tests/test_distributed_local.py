"""Gangs on the local backend: one process group per rank, torchrun's variables, all-or-nothing.

Real processes: the ranks meet on loopback with plain sockets (no torch needed here; the torch
all-reduce is test_distributed_example.py).
"""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from trainyard_contracts import Rendezvous
from trainyard_executor.backends import AttemptLaunch, LocalBackend
from trainyard_executor.backends.base import Gang
from trainyard_executor.core import free_loopback_port
from trainyard_executor.jobenv import plan_gang
from trainyard_executor.testengines import Lines, pid_alive, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.distributed, pytest.mark.local]

PY = sys.executable


def gang_launch(tmp_path: Path, script: str, replicas: int = 2, **kw: Any) -> AttemptLaunch:
    job_id = "gang" + uuid.uuid4().hex[:10]
    defaults: dict[str, Any] = {
        "job_id": job_id,
        "attempt": 1,
        "argv": [PY, "-c", textwrap.dedent(script)],
        "env": {"TRAINYARD_JOB_ID": job_id},
        "workdir": tmp_path / "work" / job_id / "attempt-1",
        "timeout_s": None,
        "grace_s": 5.0,
        "gang": plan_gang(replicas, None, free_loopback_port),
    }
    defaults.update(kw)
    return AttemptLaunch(**defaults)


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(root=tmp_path / "root")


def test_one_replica_is_no_gang_and_a_rendezvous_names_the_ranks() -> None:
    assert plan_gang(1, None, lambda: 1234) is None
    gang = plan_gang(3, None, lambda: 1234)
    assert gang == Gang(master_addr="127.0.0.1", master_port=1234, world_size=3, ranks=(0, 1, 2))
    split = plan_gang(
        4, Rendezvous(master_addr="trainer-0.internal", master_port=29500, world_size=4, ranks=[2, 3]), int
    )
    assert split == Gang(master_addr="trainer-0.internal", master_port=29500, world_size=4, ranks=(2, 3))
    assert split.env(1) == {
        "MASTER_ADDR": "trainer-0.internal",
        "MASTER_PORT": "29500",
        "WORLD_SIZE": "4",
        "RANK": "3",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "GROUP_RANK": "1",
        "GROUP_WORLD_SIZE": "2",
        "ROLE_RANK": "3",
        "ROLE_WORLD_SIZE": "4",
        "TRAINYARD_RANK": "3",
    }


RENDEZVOUS = """
    import os, socket, sys, time
    e = os.environ
    rank, world = int(e["RANK"]), int(e["WORLD_SIZE"])
    print("env", rank, e["LOCAL_RANK"], e["LOCAL_WORLD_SIZE"], e["GROUP_RANK"], world, flush=True)
    addr = (e["MASTER_ADDR"], int(e["MASTER_PORT"]))
    if rank == 0:  # the master collects one hello from every other rank
        server = socket.create_server(addr)
        got = []
        for _ in range(world - 1):
            conn, _ = server.accept()
            got.append(conn.recv(64).decode())
            conn.close()
        print("master heard", sorted(got), flush=True)
    else:
        for _ in range(600):  # the master may not listen yet
            try:
                with socket.create_connection(addr, timeout=1) as s:
                    s.sendall(f"hello from {rank}".encode())
                break
            except OSError:
                time.sleep(0.05)
        else:
            sys.exit("no master")
        print("said hello", file=sys.stderr, flush=True)
"""


async def test_three_ranks_meet_at_the_master_and_their_lines_are_tagged(
    backend: LocalBackend, tmp_path: Path
) -> None:
    lines = Lines()
    launch = gang_launch(tmp_path, RENDEZVOUS, replicas=3)
    outcome = await (await backend.start(launch, lines)).wait()
    assert (outcome.kind, outcome.exit_code, outcome.reason) == ("succeeded", 0, "exit code 0"), lines.got
    stdout = lines.of("stdout")
    for rank in range(3):
        assert f"[rank {rank}] env {rank} {rank} 3 0 3" in stdout
    assert "[rank 0] master heard ['hello from 1', 'hello from 2']" in stdout
    assert sorted(lines.of("stderr")) == ["[rank 1] said hello", "[rank 2] said hello"]


async def test_a_rendezvous_from_the_scheduler_runs_only_this_executors_ranks(
    backend: LocalBackend, tmp_path: Path
) -> None:
    rendezvous = Rendezvous(master_addr="127.0.0.1", master_port=1, world_size=4, ranks=[2, 3])
    script = 'import os; print(os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["GROUP_RANK"])'
    lines = Lines()
    launch = gang_launch(tmp_path, script, gang=plan_gang(4, rendezvous, free_loopback_port))
    outcome = await (await backend.start(launch, lines)).wait()
    assert outcome.kind == "succeeded"
    assert sorted(lines.of("stdout")) == ["[rank 2] 2 0 1", "[rank 3] 3 1 1"]


SLEEPERS_BUT_RANK_1_FAILS = """
    import os, sys, time
    print("pid", os.getpid(), flush=True)
    if os.environ["RANK"] == "1":
        time.sleep(0.5)
        sys.exit(3)
    time.sleep(300)
"""


async def test_one_failing_rank_fails_the_attempt_and_stops_the_others(
    backend: LocalBackend, tmp_path: Path
) -> None:
    lines = Lines()
    attempt = await backend.start(gang_launch(tmp_path, SLEEPERS_BUT_RANK_1_FAILS, replicas=3), lines)
    outcome = await attempt.wait()
    assert (outcome.kind, outcome.exit_code, outcome.reason) == ("failed", 3, "rank 1: exit code 3")
    pids = [int(t.split()[-1]) for t in lines.of("stdout") if " pid " in t]
    assert len(pids) == 3 and not any(pid_alive(p) for p in pids)


SLEEP_FOREVER = """
    import os, time
    print("pid", os.getpid(), flush=True)
    time.sleep(300)
"""


async def test_a_timeout_ends_every_rank(backend: LocalBackend, tmp_path: Path) -> None:
    lines = Lines()
    launch = gang_launch(tmp_path, SLEEP_FOREVER, timeout_s=2, grace_s=1)
    outcome = await (await backend.start(launch, lines)).wait()
    assert (outcome.kind, outcome.reason, outcome.exit_code) == ("timed_out", "timed out after 2s", -15)
    pids = [int(t.split()[-1]) for t in lines.of("stdout") if " pid " in t]
    assert len(pids) == 2 and not any(pid_alive(p) for p in pids)


async def test_cancel_sends_every_rank_sigterm_and_each_gets_its_grace(
    backend: LocalBackend, tmp_path: Path
) -> None:
    script = """
        import os, signal, sys, time
        def on_term(signum, frame):
            print("checkpointing", os.environ["RANK"], flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        print("ready", flush=True)
        time.sleep(300)
    """
    lines = Lines()
    attempt = await backend.start(gang_launch(tmp_path, script), lines)
    await wait_until(lambda: len([t for t in lines.of("stdout") if t.endswith("ready")]) == 2, "both ready")
    await attempt.cancel(grace_s=20)
    outcome = await attempt.wait()
    assert (outcome.kind, outcome.exit_code) == ("cancelled", 0)
    assert sorted(t for t in lines.of("stdout") if "checkpointing" in t) == [
        "[rank 0] checkpointing 0",
        "[rank 1] checkpointing 1",
    ]


async def test_a_command_missing_on_every_rank_fails_with_the_reason(
    backend: LocalBackend, tmp_path: Path
) -> None:
    launch = gang_launch(tmp_path, "", argv=["trainyard-no-such-command"])
    outcome = await (await backend.start(launch, Lines())).wait()
    assert outcome.kind == "failed" and outcome.exit_code is None
    assert outcome.reason in (
        "rank 0: command not found: trainyard-no-such-command",
        "rank 1: command not found: trainyard-no-such-command",
    )
