"""examples/distributed: a real 2-rank PyTorch all-reduce (gloo, CPU), through the local backend and
through scheduler + executor on a real nats-server.

torch is the example's own requirement (its job's ``runtime_env.pip``), not Trainyard's: the
runtime-env venv is built once in a stable cache dir (``TRAINYARD_TEST_RUNTIME_ENV_DIR``, default
``~/.cache/trainyard/runtime-envs``) and reused by every later run. The first build on a fresh
machine installs torch (~30 s here from the local CPU wheel; see docs/executors.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainyard_contracts import JobSpec
from trainyard_executor.backends import AttemptLaunch, LocalBackend, RuntimeEnvCache
from trainyard_executor.core import free_loopback_port
from trainyard_executor.jobenv import plan_gang

pytestmark = [pytest.mark.distributed, pytest.mark.local, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "distributed"
SCRIPT = EXAMPLE / "allreduce.py"


def load_harness() -> Any:
    """The shared test kit (an installed module: no dependence on how pytest names `tests`)."""
    from trainyard_shared.testing import helpers

    return helpers


def stable_env_dir() -> Path:
    configured = os.environ.get("TRAINYARD_TEST_RUNTIME_ENV_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "trainyard" / "runtime-envs"


def example_spec() -> JobSpec:
    """The example's job as written, but running the script from this work tree (no checkout:
    the test must also pass on uncommitted changes)."""
    raw = yaml.safe_load((EXAMPLE / "job.yaml").read_text())
    raw.pop("source")
    raw["command"] = ["python", str(SCRIPT)]
    return JobSpec.model_validate(raw)


def rank_lines(texts: list[str], world: int) -> dict[int, str]:
    found = {}
    for rank in range(world):
        wanted = f"[rank {rank}] rank {rank}/{world} (local {rank}): all_reduce sum = "
        for text in texts:
            if text.startswith(wanted):
                found[rank] = text
    return found


async def test_two_ranks_all_reduce_through_the_local_backend(tmp_path: Path) -> None:
    spec = example_spec()
    assert spec.replicas == 2 and spec.runtime_env is not None
    backend = LocalBackend(root=tmp_path / "root", runtime_env_cache=RuntimeEnvCache(stable_env_dir()))
    gang = plan_gang(spec.replicas, None, free_loopback_port)
    assert gang is not None
    got: list[tuple[str, str]] = []

    async def sink(stream: str, line: str) -> None:
        got.append((stream, line))

    launch = AttemptLaunch(
        job_id="allreduce",
        attempt=1,
        argv=spec.argv(),
        env={"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1"},
        workdir=tmp_path / "work",
        timeout_s=900,
        runtime_pip=tuple(spec.runtime_env.pip),
        gang=gang,
    )
    outcome = await (await backend.start(launch, sink)).wait()
    assert (outcome.kind, outcome.exit_code) == ("succeeded", 0), got[-30:]
    stdout = [line for stream, line in got if stream == "stdout"]
    lines = rank_lines(stdout, 2)
    assert sorted(lines) == [0, 1], stdout
    for line in lines.values():
        assert line.endswith("all_reduce sum = 3, expected 3"), line  # 1 + 2, on both ranks
    result = json.loads((outcome.output_dir / "allreduce.json").read_text())
    assert result["world_size"] == 2 and result["sum"] == 3.0 and result["torch"].startswith("2.13.0")


@pytest.mark.service
async def test_the_example_job_runs_through_scheduler_and_executor(
    nats_server, prefix, tmp_path: Path
) -> None:
    harness = load_harness()
    Bus, common_settings, running = harness.Bus, harness.common_settings, harness.running
    from trainyard_executor.app import create_app as executor_app
    from trainyard_executor.testkit import quick_executor_settings
    from trainyard_scheduler.testkit import quick_scheduler

    common = common_settings(nats_server.url, prefix, tmp_path / "data")
    settings = quick_executor_settings("exec-dist", lease_seconds=10, runtime_env_dir=stable_env_dir())
    sched = quick_scheduler(common)
    async with Bus(nats_server.url, prefix) as bus, running(sched), running(executor_app(common, settings)):
        job_id = await bus.submit(example_spec())
        record = await bus.wait_state(job_id, "succeeded", "failed", "timed_out", "cancelled", timeout=900)
        texts = await bus.log_text(job_id)
        events = await bus.event_types(job_id)
    assert record.state.value == "succeeded", (record.reason, texts[-30:])
    assert events.count("running") == 1
    lines = rank_lines(texts, 2)
    assert sorted(lines) == [0, 1], texts
    assert all(line.endswith("all_reduce sum = 3, expected 3") for line in lines.values())
    assert any("ranks [0, 1] of 2" in t for t in texts)  # the executor's own line about the gang
