"""The digits example for real: train.py as a job process, its MLflow run adopted by the registry.

The job's run gets its Trainyard tags from the client package's run-context provider (the
``mlflow.run_context_provider`` entry point), not from anything train.py does.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from trainyard_registry.mlflow_names import ModelRequest
from trainyard_registry.mlflow_store import MlflowModelStore

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "digits"
TRAIN = EXAMPLE / "train.py"
COMMIT = "fedcba9876543210fedcba9876543210fedcba98"  # not this checkout's HEAD: proves the plugin won
JOB_ID = "digitsjob00001"


def load_train() -> ModuleType:
    spec = importlib.util.spec_from_file_location("digits_train", TRAIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINYARD_", "MLFLOW_"))}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1", **extra)
    return env


def run_train(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TRAIN), *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


# ---------------------------------------------------------------------------------- pure


@pytest.mark.unit
def test_job_yaml_is_a_valid_spec_whose_command_matches_its_params() -> None:
    from trainyard_contracts.spec import parse_spec

    spec = parse_spec((EXAMPLE / "job.yaml").read_text())
    assert spec.outputs is not None and spec.outputs.model == "digits-classifier"
    assert spec.outputs.path == "outputs"
    assert spec.command[:2] == ["python", "examples/digits/train.py"]
    args = load_train().parse_args(spec.command[2:])
    assert (args.C, args.max_iter, args.model) == (
        spec.params["C"],
        spec.params["max_iter"],
        spec.params["model"],
    )


@pytest.mark.unit
@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--C", "-1"], "--C: must be a positive finite number"),
        (["--C", "abc"], "--C: not a number"),
        (["--max-iter", "0"], "--max-iter: must be at least 1"),
        (["--model", "forest"], "invalid choice"),
        (["--test-size", "1.5"], "--test-size must be between 0 and 1"),
    ],
)
def test_bad_arguments_are_refused_with_the_argument_named(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        load_train().parse_args(argv)
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err


@pytest.mark.unit
def test_the_run_context_provider_is_installed_and_tags_from_the_job_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    [entry] = [
        e
        for e in importlib.metadata.entry_points(group="mlflow.run_context_provider")
        if e.name == "trainyard"
    ]
    provider = entry.load()()
    for var in ("TRAINYARD_JOB_ID", "TRAINYARD_GIT_COMMIT", "TRAINYARD_GIT_REPO"):
        monkeypatch.delenv(var, raising=False)
    assert provider.in_context() is False

    monkeypatch.setenv("TRAINYARD_JOB_ID", "job123456")
    monkeypatch.setenv("TRAINYARD_ATTEMPT", "2")
    monkeypatch.setenv("TRAINYARD_QUEUE", "gpu")
    monkeypatch.setenv("TRAINYARD_JOB_NAME", "digits")
    assert provider.in_context() is True
    assert provider.tags() == {
        "trainyard.job_id": "job123456",
        "trainyard.attempt": "2",
        "trainyard.queue": "gpu",
        "trainyard.job_name": "digits",
    }
    monkeypatch.setenv("TRAINYARD_GIT_COMMIT", COMMIT)
    monkeypatch.setenv("TRAINYARD_GIT_REPO", "https://git.example/digits.git")
    tags = provider.tags()
    assert tags["mlflow.source.git.commit"] == COMMIT
    assert tags["mlflow.source.git.repoURL"] == "https://git.example/digits.git"


# ---------------------------------------------------------------------------------- real runs


@pytest.mark.service
def test_train_writes_a_working_model_and_metrics_without_mlflow(tmp_path: Path) -> None:
    done = run_train(["--C", "0.5", "--max-iter", "300", "--seed", "1"], cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert "step 2/3 eval accuracy=" in done.stdout
    assert "MLFLOW_TRACKING_URI not set" in done.stdout
    metrics = json.loads((tmp_path / "outputs" / "metrics.json").read_text())
    assert set(metrics) == {"accuracy", "f1_macro", "train_accuracy", "train_seconds"}
    assert metrics["accuracy"] > 0.9 and metrics["f1_macro"] > 0.9
    with open(tmp_path / "outputs" / "model.pkl", "rb") as f:
        model = pickle.load(f)
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    assert (model.predict(x[:200]) == y[:200]).mean() > 0.9
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.service
def test_bad_arguments_exit_non_zero_with_a_message(tmp_path: Path) -> None:
    done = run_train(["--max-iter", "-3"], cwd=tmp_path)
    assert done.returncode == 2
    assert "--max-iter: must be at least 1" in done.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.service
def test_the_registry_adopts_the_run_the_digits_job_logged(tmp_path: Path) -> None:
    db = tmp_path / "mlflow" / "mlflow.db"
    store = MlflowModelStore(f"sqlite:///{db}")  # first: the job's Default experiment lands next to it
    workdir = tmp_path / "work"
    workdir.mkdir()
    out = workdir / "outputs"

    done = run_train(
        ["--C", "1.0", "--max-iter", "200"],
        cwd=workdir,
        MLFLOW_TRACKING_URI=store.tracking_uri,
        TRAINYARD_JOB_ID=JOB_ID,
        TRAINYARD_ATTEMPT="1",
        TRAINYARD_QUEUE="default",
        TRAINYARD_JOB_NAME="digits-logreg",
        TRAINYARD_GIT_REPO="https://git.example/ml/trainyard.git",
        TRAINYARD_GIT_COMMIT=COMMIT,
        TRAINYARD_OUTPUT_DIR=str(out),
    )
    assert done.returncode == 0, done.stderr
    assert "Failure attempting to register context provider" not in done.stderr
    [job_run] = store.client.search_runs(["0"], f"tags.`trainyard.job_id` = '{JOB_ID}'")
    assert job_run.data.tags["mlflow.source.git.commit"] == COMMIT
    assert f"logged run {job_run.info.run_id}" in done.stdout

    req = ModelRequest(
        job_id=JOB_ID,
        attempt=1,
        queue="default",
        job_name="digits-logreg",
        model_name="digits-classifier",
        outputs_dir=out,
        params={"C": 1.0, "max_iter": 200, "model": "logistic-regression"},
        git_repo="https://git.example/ml/trainyard.git",
        git_commit=COMMIT,
    )
    got = store.register(req)

    assert got.run_id == job_run.info.run_id
    assert got.version == 1 and got.job_id == JOB_ID and got.git_commit == COMMIT
    assert got.metrics["accuracy"] > 0.9 and got.metrics["f1_macro"] > 0.9
    run = store.client.get_run(got.run_id)
    assert run.data.params["C"] == "1.0" and run.data.params["max_iter"] == "200"
    assert run.data.tags["trainyard.job_id"] == JOB_ID
    assert run.data.tags["trainyard.job_name"] == "digits-logreg"
    assert run.data.tags["mlflow.source.git.commit"] == COMMIT
    assert run.data.tags["mlflow.source.git.repoURL"] == "https://git.example/ml/trainyard.git"
    mv = store.client.get_model_version("digits-classifier", "1")
    assert mv.tags["trainyard.job_id"] == JOB_ID and mv.tags["git_commit"] == COMMIT
    assert mv.run_id == job_run.info.run_id
    # the job's artifacts stayed out of its working directory; the model is under the store
    assert not (workdir / "mlruns").exists()
    source = Path(got.source.removeprefix("file://"))
    assert source.is_relative_to(db.parent / "mlartifacts")
    with open(source / "model.pkl", "rb") as f:
        assert pickle.load(f).predict([[0.0] * 64]).shape == (1,)

    assert [(m.version, m.run_id) for m in store.list_versions("digits-classifier")] == [(1, got.run_id)]
    assert store.register(req) == got  # the redelivered event
    assert store.find_by_job(JOB_ID) == got
