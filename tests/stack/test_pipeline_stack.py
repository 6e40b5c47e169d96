"""A pipeline on the embedded stack through the CLI: `trainyard up` (the six services and
nats-server as processes, each service its own NATS user), then `trainyard pipeline run
examples/pipelines/three-steps.yaml` twice: once succeeding, once with a failing branch that ends
its dependent `skipped` and runs its failure handler."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainyard_client.uptest import Up, free_block

pytestmark = [pytest.mark.stack, pytest.mark.workflow, pytest.mark.local, pytest.mark.timeout(900)]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pipelines" / "three-steps.yaml"


def trainyard(up: Up, *args: str) -> subprocess.CompletedProcess[str]:
    token = (up.data / "api-token").read_text().strip()
    return subprocess.run(
        [sys.executable, "-m", "trainyard_client.cli", *args],
        env={
            "TRAINYARD_URL": f"http://127.0.0.1:{up.api_port}",
            "TRAINYARD_TOKEN": token,
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )


def finished_run(up: Up, *params: str) -> tuple[dict, dict[str, str]]:
    """`pipeline run EXAMPLE --wait -o json`: the run and its steps' states (exit 0: it succeeded).
    Not on a terminal, the wait says each step's changes on stderr, a line each, and the end."""
    done = trainyard(up, "pipeline", "run", str(EXAMPLE), *params, "--wait", "-o", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    run = json.loads(done.stdout)
    states = {name: step["state"] for name, step in run["steps"].items()}
    lines = [line.split(" ", 1)[1] for line in done.stderr.splitlines()]  # after the time
    for name, state in states.items():
        assert any(line.startswith(f"{name} {state}") for line in lines), (name, state, done.stderr)
    assert any(line.startswith("train ") and "/3 done" in line for line in lines), done.stderr
    assert lines[-1] == f"run {run['run_id']} {run['state']}"
    return run, states


def test_the_example_pipeline_runs_and_its_failing_branch_skips(tmp_path):
    base = free_block(7)
    up = Up(tmp_path / "data", base, base + 6).start()
    try:
        run, states = finished_run(up)
        assert run["state"] == "succeeded"
        assert states == {
            "prepare": "succeeded",
            "train": "succeeded",
            "evaluate": "succeeded",
            "report": "skipped",
        }
        assert sorted(run["steps"]["train"]["jobs"]) == ["0", "1", "2"]

        run, states = finished_run(up, "-p", "fail_training=1")
        assert states == {
            "prepare": "succeeded",
            "train": "failed",
            "evaluate": "skipped",
            "report": "succeeded",
        }
        assert run["state"] == "succeeded"  # train's failure was handled by report

        listed = trainyard(up, "pipeline", "list", "-o", "json")
        assert len(json.loads(listed.stdout)) == 2
        shown = trainyard(up, "pipeline", "status", run["run_id"])
        assert shown.returncode == 0 and "evaluate" in shown.stdout and "skipped" in shown.stdout
        watched = trainyard(up, "pipeline", "status", run["run_id"], "--watch")  # ended: at once
        assert watched.returncode == 0 and "evaluate skipped" in watched.stdout
        assert f"run {run['run_id']} succeeded" in watched.stdout
        bad = trainyard(up, "pipeline", "run", str(EXAMPLE), "-p", "oops")
        assert bad.returncode == 2 and "key=value" in bad.stderr + bad.stdout
    finally:
        up.signal()
        up.wait(120)
