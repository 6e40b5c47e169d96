"""examples/distributed (a real 2-rank PyTorch all-reduce, gloo on the CPU) split across two local
executors that each have room for one rank, through scheduler and executors on a real nats-server.

torch is the example's own requirement (its ``runtime_env``), built once into the stable cache dir
the other distributed test uses (``TRAINYARD_TEST_RUNTIME_ENV_DIR``, default
``~/.cache/trainyard/runtime-envs``); both executors share it (the cache locks per key).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import yaml

from trainyard_contracts import JobSpec, JobState
from trainyard_executor.app import create_app as executor_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_scheduler.testkit import quick_scheduler

from .harness import Bus, common_settings, running

pytestmark = [pytest.mark.distributed, pytest.mark.local, pytest.mark.service, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "distributed"


def stable_env_dir() -> Path:
    configured = os.environ.get("TRAINYARD_TEST_RUNTIME_ENV_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "trainyard" / "runtime-envs"


def example_spec() -> JobSpec:
    """The example's job as written, running the script from this work tree (no checkout)."""
    raw = yaml.safe_load((EXAMPLE / "job.yaml").read_text())
    raw.pop("source")
    raw["command"] = ["python", str(EXAMPLE / "allreduce.py")]
    return JobSpec.model_validate(raw)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def one_rank_executor(name: str, port: int) -> ExecutorSettings:
    return ExecutorSettings(
        id=name,
        cpu=1,  # the example asks 1 CPU and 2 GiB per replica: room for one rank each
        memory=3072,
        gpu=0,
        heartbeat_seconds=0.5,
        lease_seconds=10,
        grace_seconds=2,
        runtime_env_dir=stable_env_dir(),
        rendezvous_port_first=port,
        rendezvous_port_last=port,
    )


async def test_the_all_reduce_example_split_across_two_executors(nats_server, prefix, tmp_path: Path) -> None:
    spec = example_spec()
    assert spec.replicas == 2 and spec.resources.cpu == 1
    common = common_settings(nats_server.url, prefix, tmp_path / "data")
    port = free_port()
    sched = quick_scheduler(common)
    async with (
        Bus(nats_server.url, prefix) as bus,
        running(sched),
        running(executor_app(common, one_rank_executor("exec-x", port))),
        running(executor_app(common, one_rank_executor("exec-y", port))),
    ):
        job_id = await bus.submit(spec)
        record = await bus.wait_state(job_id, "succeeded", "failed", "timed_out", "cancelled", timeout=900)
        texts = await bus.log_text(job_id)
        events = await bus.event_types(job_id)
    assert record.state == JobState.SUCCEEDED, (record.reason, texts[-30:])
    assert record.gang is not None and {m.executor_id for m in record.gang.members} == {"exec-x", "exec-y"}
    assert record.gang.master_port == port
    for rank in (0, 1):  # each executor ran one rank: its local rank is 0, its global rank its own
        wanted = f"[rank {rank}] rank {rank}/2 (local 0): all_reduce sum = 3, expected 3"
        assert wanted in texts, texts[-30:]
    assert events.count("running") == 1 and events[-1] == "succeeded", events
    # rank 0's outputs are the job's
    assert record.outputs_uri is not None
    result = json.loads((Path(record.outputs_uri.removeprefix("file://")) / "allreduce.json").read_text())
    assert result["world_size"] == 2 and result["sum"] == 3.0
