"""What an attempt ran in (a version's lineage, docs/models.md): the runtime env's lock on the
local backend, carried by the end report onto the attempt's record entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.executor.tests.test_local_backend import make_launch, run
from trainyard_contracts import JobSpec, JobState, lifecycle
from trainyard_contracts._time import utcnow
from trainyard_contracts.records import AttemptRuntime
from trainyard_contracts.reports import ExecutorReport
from trainyard_executor.backends import LocalBackend
from trainyard_executor.backends.runtime_env import MARKER_NAME, RuntimeEnvCache
from trainyard_shared.reports import apply_report


@pytest.fixture(autouse=True)
def _offline_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # nothing here may need a download


@pytest.mark.local
async def test_a_job_in_a_runtime_env_ends_with_that_envs_lock(tmp_path: Path) -> None:
    cache = RuntimeEnvCache(tmp_path / "envs")
    backend = LocalBackend(root=tmp_path / "root", runtime_env_cache=cache)
    outcome, lines = await run(backend, make_launch(tmp_path, ["true"], runtime_pip=("pydantic",)))
    assert outcome.kind == "succeeded", (outcome, lines.got)
    venv = next(p for p in (tmp_path / "envs").iterdir() if (p / MARKER_NAME).is_file())
    lock = json.loads((venv / MARKER_NAME).read_text())["lock"]
    assert lock.startswith("sha256:") and len(lock) == 71
    assert outcome.runtime == AttemptRuntime(runtime_lock=lock)

    plain, _ = await run(LocalBackend(root=tmp_path / "plain"), make_launch(tmp_path / "p", ["true"]))
    assert plain.kind == "succeeded" and plain.runtime is None  # no runtime env: nothing to lock


@pytest.mark.unit
def test_the_end_report_puts_the_runtime_on_the_attempts_record_entry() -> None:
    now = utcnow()
    spec = JobSpec(name="locked", command=["true"])
    queued = lifecycle.advance(lifecycle.new_record("j1", spec, now, None), JobState.QUEUED, now)
    running = lifecycle.start(lifecycle.schedule(queued, "exec-a", now), now)
    runtime = AttemptRuntime(image_digest="sha256:" + "a" * 64, runtime_lock="sha256:" + "b" * 64)
    report = ExecutorReport(
        kind="end",
        job_id="j1",
        attempt=1,
        executor_id="exec-a",
        time=utcnow(),
        outcome="succeeded",
        exit_code=0,
        reason="exit code 0",
        runtime=runtime,
    )
    after = apply_report(running, report)
    assert after is not None and after.state == JobState.SUCCEEDED
    assert after.attempts[-1].runtime == runtime
