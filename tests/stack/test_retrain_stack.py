"""examples/pipelines/retrain.yaml on the embedded stack (`trainyard up`: nats-server and the six
services as processes, MLflow on SQLite), through the CLI: each step hands its results to the next
through its outputs, and the last one uses the model version the registry gave the register step
(what `make demo-pipeline` shows)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainyard_client.uptest import Up, free_block

from .test_pipeline_stack import trainyard

pytestmark = [pytest.mark.stack, pytest.mark.workflow, pytest.mark.local, pytest.mark.timeout(900)]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pipelines" / "retrain.yaml"


def test_the_retrain_example_passes_outputs_and_the_registered_version_along(tmp_path):
    base = free_block(7)
    up = Up(tmp_path / "data", base, base + 6).start()
    try:
        done = trainyard(up, "pipeline", "run", str(EXAMPLE), "-p", "large_c=0.001", "--wait", "-o", "json")
        assert done.returncode == 0, done.stdout + done.stderr
        run = json.loads(done.stdout)
        assert {name: step["state"] for name, step in run["steps"].items()} == dict.fromkeys(
            ["prepare", "train-small-c", "train-large-c", "evaluate", "register", "announce"], "succeeded"
        )
        client = up.client()
        job = {name: client.get(step["jobs"]["0"]["job_id"]) for name, step in run["steps"].items()}
        assert job["prepare"].outputs == {"seed": 0, "test_size": 0.25, "dataset": "sklearn-digits"}
        assert "--seed=0" in job["train-small-c"].spec.command
        small, large = job["train-small-c"].outputs, job["train-large-c"].outputs
        assert small["accuracy"] > large["accuracy"]  # C=0.001 underfits
        assert job["evaluate"].outputs == {"best_c": 0.1, "best_accuracy": small["accuracy"]}
        register = job["register"]
        assert "--C=0.1" in register.spec.command and register.spec.params["C"] == 0.1
        assert register.model is not None and register.model.name == "digits-classifier"
        announced = f"registered digits-classifier version {register.model.version} (accuracy"
        assert announced in " ".join(job["announce"].spec.command)
    finally:
        up.signal()
        up.wait(120)
