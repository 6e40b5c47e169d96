"""examples/pipelines/sweep-then-train.yaml on the embedded stack (`trainyard up`: nats-server and
the six services as processes, MLflow on SQLite), through the CLI: the pipeline's first step is the
light RL example's sweep (two trials here), the next trains with the best trial's parameters and
registers the policy, the last names the version. The gymnasium venv is built once into
~/.cache/trainyard/runtime-envs (TRAINYARD_TEST_RUNTIME_ENV_DIR), as the sweep tests build it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trainyard_client.uptest import Up, free_block

from .test_pipeline_stack import trainyard

pytestmark = [
    pytest.mark.stack,
    pytest.mark.workflow,
    pytest.mark.sweep,
    pytest.mark.local,
    pytest.mark.timeout(900),
]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pipelines" / "sweep-then-train.yaml"


def stable_env_dir() -> Path:
    configured = os.environ.get("TRAINYARD_TEST_RUNTIME_ENV_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "trainyard" / "runtime-envs"


def test_the_sweep_then_train_example_trains_with_the_best_trials_parameters(tmp_path):
    base = free_block(7)
    env = {"TRAINYARD_EXECUTOR_RUNTIME_ENV_DIR": str(stable_env_dir())}
    up = Up(tmp_path / "data", base, base + 6, env=env).start()
    try:
        args = (
            "pipeline",
            "run",
            str(EXAMPLE),
            "-p",
            "trials=2",
            "-p",
            "iterations=5",
            "--wait",
            "-o",
            "json",
        )
        done = trainyard(up, *args)
        assert done.returncode == 0, done.stdout + done.stderr
        run = json.loads(done.stdout)
        assert {name: step["state"] for name, step in run["steps"].items()} == dict.fromkeys(
            ["search", "train", "announce"], "succeeded"
        )
        client = up.client()
        sweep = client.sweep(run["steps"]["search"]["jobs"]["0"]["job_id"])
        assert sweep.owner is not None and sweep.owner.run_id == run["run_id"]
        assert len(sweep.trials) == 2 and sweep.created_by == run["submitted_by"]
        best = sweep.best_trial()
        assert best is not None and best.value is not None
        train = client.get(run["steps"]["train"]["jobs"]["0"]["job_id"])
        command = train.spec.command
        assert command[command.index("--population") + 1] == str(best.params["population"])
        assert train.spec.params["population"] == best.params["population"]
        assert train.spec.params["sweep"] == sweep.sweep_id and train.spec.params["sweep_best"] == best.value
        assert train.model is not None and train.model.name == "cem-cartpole"
        announce = " ".join(client.get(run["steps"]["announce"]["jobs"]["0"]["job_id"]).spec.command)
        assert f"sweep {sweep.sweep_id}: best trial {best.number}" in announce
        assert f"retrained as cem-cartpole version {train.model.version}" in announce
    finally:
        up.signal()
        up.wait(120)
