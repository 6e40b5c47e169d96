"""examples/pipelines/retrain.yaml on the embedded stack (`trainyard up`: nats-server and the six
services as processes, MLflow on SQLite), through the CLI: the split and the three trained models
travel as folders under $TRAINYARD_INPUTS, the small values as outputs (an array's as one list),
and the last step uses the model version the registry gave the register step (what
`make demo-pipeline` shows)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainyard_client.uptest import Up, free_block

from .test_pipeline_stack import trainyard

pytestmark = [pytest.mark.stack, pytest.mark.workflow, pytest.mark.local, pytest.mark.timeout(900)]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pipelines" / "retrain.yaml"


def test_the_retrain_example_hands_its_data_and_models_on_as_folders(tmp_path):
    base = free_block(7)
    up = Up(tmp_path / "data", base, base + 6).start()
    try:
        done = trainyard(up, "pipeline", "run", str(EXAMPLE), "--wait", "-o", "json")
        assert done.returncode == 0, done.stdout + done.stderr
        run = json.loads(done.stdout)
        assert {name: step["state"] for name, step in run["steps"].items()} == dict.fromkeys(
            ["prepare", "train", "evaluate", "register", "announce"], "succeeded"
        )
        client = up.client()
        job = {
            name: client.get(step["jobs"]["0"]["job_id"])
            for name, step in run["steps"].items()
            if name != "train"
        }
        trained = [client.get(run["steps"]["train"]["jobs"][str(i)]["job_id"]) for i in range(3)]
        assert job["prepare"].outputs == {"seed": 0, "test_size": 0.25, "dataset": "sklearn-digits"}
        # the split and the models travelled as folders: each step got its dependencies' digests
        assert {i.path for i in trained[0].spec.inputs} == {"prepare"}
        assert {i.path for i in job["evaluate"].spec.inputs} == {"prepare", "train/0", "train/1", "train/2"}
        assert {i.path for i in job["register"].spec.inputs} == {"evaluate", "prepare"}
        assert [t.outputs["C"] for t in trained] == [0.001, 0.1, 10.0]
        accuracies = [t.outputs["accuracy"] for t in trained]
        assert accuracies[1] == max(accuracies) > accuracies[0]  # C=0.001 underfits
        # evaluate scored the models it read from $TRAINYARD_INPUTS/train/<i>/ itself
        assert job["evaluate"].outputs == {"best_c": 0.1, "best_accuracy": accuracies[1], "best_index": 1}
        assert json.loads(job["evaluate"].spec.command[-1].split("=", 1)[1]) == accuracies  # the array's list
        register = job["register"]
        assert "--C=0.1" in register.spec.command and register.spec.params["C"] == 0.1
        assert register.outputs["accuracy"] == accuracies[1]  # the model evaluate chose, scored again
        assert register.model is not None and register.model.name == "digits-classifier"
        lineage = trainyard(
            up, "models", "lineage", "digits-classifier", str(register.model.version), "-o", "json"
        )
        assert lineage.returncode == 0 and "digits-split" in lineage.stdout, lineage.stdout + lineage.stderr
        announced = f"registered digits-classifier version {register.model.version} (accuracy"
        assert announced in " ".join(job["announce"].spec.command)
    finally:
        up.signal()
        up.wait(120)
