"""MlflowModelStore against a real MLflow SQLite store (no server): idempotent model versions."""

from __future__ import annotations

import json
import pickle
import threading
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import LoggedModel, LoggedModelStatus, Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from trainyard_contracts.modelregistry import VersionInfo
from trainyard_registry.mlflow_names import VERSION_TAGS, MlflowStoreError, ModelRequest
from trainyard_registry.mlflow_store import MlflowModelStore, sqlite_artifact_dir
from trainyard_registry.outputs import read_metrics_file

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> MlflowModelStore:
    # one database for the module (creating one runs MLflow's migrations, ~3 s); every test uses
    # its own job ids and model names
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return MlflowModelStore(f"sqlite:///{db}")


def job_id() -> str:
    return "job" + uuid.uuid4().hex[:12]


def model_name() -> str:
    return "m-" + uuid.uuid4().hex[:10]


def outputs(tmp_path: Path, metrics: dict[str, object] | None = None) -> Path:
    out = tmp_path / f"outputs-{uuid.uuid4().hex[:6]}"
    out.mkdir()
    (out / "model.pkl").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    if metrics is not None:
        (out / "metrics.json").write_text(json.dumps(metrics))
    return out


def request(out: Path, name: str, jid: str | None = None, **kw: object) -> ModelRequest:
    base = ModelRequest(
        job_id=jid or job_id(),
        attempt=1,
        queue="default",
        job_name="digits-logreg",
        model_name=name,
        outputs_dir=out,
        params={"C": 1.0, "max_iter": 200, "model": "logistic-regression", "scale": True},
        git_repo="https://git.example/ml/digits.git",
        git_commit=COMMIT,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def all_experiment_ids(store: MlflowModelStore) -> list[str]:
    return [e.experiment_id for e in store.client.search_experiments()]


def runs_of(store: MlflowModelStore, jid: str) -> list[Run]:
    return store.client.search_runs(all_experiment_ids(store), f"tags.`trainyard.job_id` = '{jid}'")


def logged_models_of(store: MlflowModelStore, jid: str) -> list[LoggedModel]:
    flt = f"tags.`trainyard.job_id` = '{jid}'"
    return store.client.search_logged_models(all_experiment_ids(store), filter_string=flt)


def versions_of(store: MlflowModelStore, name: str) -> list[ModelVersion]:
    return store.client.search_model_versions(f"name = '{name}'")


# ---------------------------------------------------------------------------------- pure helpers


@pytest.mark.unit
def test_each_lineage_tag_a_version_is_read_by_fills_a_field_of_its_answer() -> None:
    # the answer ignores unknown names (extra="ignore"): a misspelt field would be dropped unseen
    assert set(VERSION_TAGS) <= set(VersionInfo.model_fields) - {"name", "version"}


def test_metrics_file_is_read_as_floats_and_non_numbers_are_left_out(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text(
        json.dumps({"accuracy": 0.97, "epochs": 3, "note": "x", "flag": True, "nan": None})
    )
    assert read_metrics_file(tmp_path) == {"accuracy": 0.97, "epochs": 3.0}
    assert read_metrics_file(tmp_path / "absent") == {}


@pytest.mark.unit
@pytest.mark.parametrize("text", ["[1, 2]", "{not json", '"0.9"'])
def test_a_malformed_metrics_file_is_an_error_naming_the_file(tmp_path: Path, text: str) -> None:
    (tmp_path / "metrics.json").write_text(text)
    with pytest.raises(ValueError, match=r"metrics\.json"):
        read_metrics_file(tmp_path)


@pytest.mark.unit
def test_artifacts_of_a_sqlite_store_live_next_to_the_database(tmp_path: Path) -> None:
    assert sqlite_artifact_dir(f"sqlite:///{tmp_path}/db/mlflow.db") == tmp_path / "db" / "mlartifacts"
    assert sqlite_artifact_dir("http://127.0.0.1:5000") is None
    assert sqlite_artifact_dir("sqlite://") is None


# ---------------------------------------------------------------------------------- registering


@pytest.mark.service
def test_a_job_without_its_own_run_gets_a_run_with_params_metrics_and_tags(
    store: MlflowModelStore, tmp_path: Path
) -> None:
    name = model_name()
    req = request(outputs(tmp_path, {"accuracy": 0.93, "f1_macro": 0.91}), name)

    got = store.register(req)

    assert (got.name, got.version, got.job_id, got.git_commit) == (name, 1, req.job_id, COMMIT)
    assert got.metrics == {"accuracy": 0.93, "f1_macro": 0.91}
    assert got.model_id and got.model_id.startswith("m-")
    run = store.client.get_run(got.run_id)
    experiment = store.client.get_experiment(run.info.experiment_id)
    assert experiment.name == "trainyard"
    assert experiment.artifact_location == (store.artifact_dir / "trainyard").as_uri()  # type: ignore[operator]
    assert run.info.status == "FINISHED"
    assert run.data.params == {"C": "1.0", "max_iter": "200", "model": "logistic-regression", "scale": "True"}
    assert run.data.metrics == {"accuracy": 0.93, "f1_macro": 0.91}
    tags = run.data.tags
    assert tags["trainyard.job_id"] == req.job_id
    assert (tags["trainyard.attempt"], tags["trainyard.queue"], tags["trainyard.job_name"]) == (
        "1",
        "default",
        "digits-logreg",
    )
    assert tags["mlflow.source.git.commit"] == COMMIT
    assert tags["mlflow.source.git.repoURL"] == "https://git.example/ml/digits.git"

    mv = store.client.get_model_version(name, "1")
    assert mv.run_id == got.run_id and mv.source == got.source
    assert mv.tags["trainyard.job_id"] == req.job_id
    assert mv.tags["trainyard.attempt"] == "1"
    assert mv.tags["git_commit"] == COMMIT
    # the version's source holds the job's outputs, byte for byte
    source_dir = Path(got.source.removeprefix("file://"))
    assert source_dir.is_relative_to(store.artifact_dir)  # type: ignore[arg-type]
    assert (source_dir / "model.pkl").read_bytes() == (req.outputs_dir / "model.pkl").read_bytes()
    logged = store.client.get_logged_model(got.model_id)
    assert logged.status == LoggedModelStatus.READY and logged.source_run_id == got.run_id
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [{"name": name, "version": 1}]


@pytest.mark.service
@pytest.mark.sweep
def test_a_sweep_trials_model_carries_its_sweep_and_trial_on_run_and_version(
    store: MlflowModelStore, tmp_path: Path
) -> None:
    from trainyard_contracts.sweeps import SWEEP_LABEL, TRIAL_LABEL
    from trainyard_registry.core import lineage_of

    lineage = lineage_of({SWEEP_LABEL: "0mx7gilrd5ytnk74", TRIAL_LABEL: "3", "team": "ml"})
    assert lineage == {"trainyard.sweep": "0mx7gilrd5ytnk74", "trainyard.sweep_trial": "3"}
    name = model_name()
    got = store.register(request(outputs(tmp_path, {"mean_return": 476.5}), name, lineage=lineage))
    mv = store.client.get_model_version(name, str(got.version))
    assert (mv.tags["trainyard.sweep"], mv.tags["trainyard.sweep_trial"]) == ("0mx7gilrd5ytnk74", "3")
    assert store.client.get_run(got.run_id).data.tags["trainyard.sweep"] == "0mx7gilrd5ytnk74"


@pytest.mark.service
@pytest.mark.sweep
def test_the_best_trial_of_a_sweep_step_carries_its_sweep_and_pipeline_run(
    store: MlflowModelStore, tmp_path: Path
) -> None:
    """A sweep that is a pipeline step: its trials' jobs (as the workflow service makes them)
    carry the run and step too, so the best trial's version names the sweep and the run."""
    from trainyard_contracts.sweeps import SweepOwner, trial_job, validate_sweep
    from trainyard_registry.core import lineage_of

    sweep = validate_sweep(
        {
            "name": "cem",
            "job": {"name": "cem", "command": ["true", "${{ params.lr }}"], "outputs": {"model": "cem"}},
            "space": {"lr": {"type": "float", "low": 0.01, "high": 0.1}},
            "objective": {"metric": "mean_return", "direction": "maximize"},
        }
    )
    owner = SweepOwner(run_id="0mx7ger5efpkyc6s", step="search", attempt=1)
    job = trial_job(sweep, {"lr": 0.05}, "sw0123456789abcdef01", 4, owner)
    lineage = lineage_of(job.labels)
    name = model_name()
    got = store.register(request(outputs(tmp_path, {"mean_return": 500.0}), name, lineage=lineage))
    tags = store.client.get_model_version(name, str(got.version)).tags
    assert tags["trainyard.sweep"] == "sw0123456789abcdef01" and tags["trainyard.sweep_trial"] == "4"
    assert (
        tags["trainyard.pipeline_run"] == "0mx7ger5efpkyc6s" and tags["trainyard.pipeline_step"] == "search"
    )
    run_tags = store.client.get_run(got.run_id).data.tags
    assert (run_tags["trainyard.sweep"], run_tags["trainyard.pipeline_run"]) == (
        "sw0123456789abcdef01",
        "0mx7ger5efpkyc6s",
    )


@pytest.mark.service
def test_registering_the_same_job_again_returns_the_same_version_and_creates_nothing(
    store: MlflowModelStore, tmp_path: Path
) -> None:
    name = model_name()
    req = request(outputs(tmp_path, {"accuracy": 0.9}), name)
    first = store.register(req)

    again = store.register(req)
    redelivered_later = store.register(replace(req, attempt=1))

    assert again == first == redelivered_later
    assert [int(v.version) for v in versions_of(store, name)] == [1]
    assert len(runs_of(store, req.job_id)) == 1
    assert len(logged_models_of(store, req.job_id)) == 1
    assert store.find_by_job(req.job_id) == first


@pytest.mark.service
def test_a_second_job_makes_version_two_and_listing_is_newest_first(
    store: MlflowModelStore, tmp_path: Path
) -> None:
    name = model_name()
    one = store.register(request(outputs(tmp_path, {"accuracy": 0.8}), name))
    two = store.register(request(outputs(tmp_path, {"accuracy": 0.85}), name, git_commit=None))

    assert (one.version, two.version) == (1, 2)
    assert two.run_id != one.run_id and two.model_id != one.model_id
    assert two.git_commit is None and two.metrics == {"accuracy": 0.85}
    listed = store.list_versions(name)
    assert [(m.version, m.job_id) for m in listed] == [(2, two.job_id), (1, one.job_id)]
    assert store.list_versions(name, limit=1) == [listed[0]]
    everything = store.list_versions(limit=1000)
    assert {(m.name, m.version) for m in everything} >= {(name, 1), (name, 2)}
    assert store.find_by_job(two.job_id) == two
    assert store.find_by_job("job-never-ran") is None


@pytest.mark.service
def test_the_run_a_job_logged_is_adopted_and_the_latest_of_the_current_attempt_wins(
    store: MlflowModelStore, tmp_path: Path
) -> None:
    jid, name = job_id(), model_name()
    client = store.client
    experiment_id = client.create_experiment(
        f"job-exp-{jid}", artifact_location=(tmp_path / "job-artifacts").as_uri()
    )

    def job_run(attempt: int, accuracy: float, start: int) -> str:
        tags = {"trainyard.job_id": jid, "trainyard.attempt": str(attempt)}
        run = client.create_run(experiment_id, start_time=start, tags=tags)
        client.log_metric(run.info.run_id, "accuracy", accuracy)
        client.set_terminated(run.info.run_id)
        run_id: str = run.info.run_id
        return run_id

    job_run(1, 0.5, start=1_000)  # attempt 1 failed half-way
    wanted = job_run(2, 0.95, start=2_000)
    job_run(2, 0.6, start=1_500)  # an earlier run of attempt 2 (e.g. a warm-up)

    got = store.register(request(outputs(tmp_path, {"accuracy": 0.1}), name, jid=jid, attempt=2))

    assert got.run_id == wanted
    assert got.metrics == {"accuracy": 0.95}  # the run's own metrics, not metrics.json
    assert len(runs_of(store, jid)) == 3  # no run of the registry's own
    run = client.get_run(wanted)
    assert run.data.tags["trainyard.queue"] == "default"
    assert run.data.tags["mlflow.source.git.commit"] == COMMIT
    assert run.data.params == {}  # params are the job's business when it logged its own run
    # the logged model sits in the job run's experiment
    assert got.model_id is not None
    assert client.get_logged_model(got.model_id).experiment_id == experiment_id


@pytest.mark.service
def test_a_failure_half_way_is_finished_by_the_next_delivery_without_duplicates(
    store: MlflowModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = model_name()
    req = request(outputs(tmp_path, {"accuracy": 0.9}), name)
    real = store.client.create_model_version
    calls = 0

    def failing_once(*args: Any, **kwargs: Any) -> ModelVersion:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise MlflowException("database is locked")
        return real(*args, **kwargs)

    monkeypatch.setattr(store.client, "create_model_version", failing_once)
    with pytest.raises(MlflowStoreError, match=rf"registering job {req.job_id}.*database is locked"):
        store.register(req)
    assert versions_of(store, name) == []

    got = store.register(req)

    assert calls == 2 and got.version == 1
    assert len(runs_of(store, req.job_id)) == 1
    assert [m.model_id for m in logged_models_of(store, req.job_id)] == [got.model_id]
    assert store.client.get_run(got.run_id).data.params["C"] == "1.0"


@pytest.mark.service
def test_two_deliveries_at_once_make_one_version(store: MlflowModelStore, tmp_path: Path) -> None:
    name = model_name()
    req = request(outputs(tmp_path, {"accuracy": 0.9}), name)
    barrier = threading.Barrier(2)
    results: list[object] = []

    def deliver() -> None:
        barrier.wait()
        results.append(store.register(req))

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert len(results) == 2 and results[0] == results[1]
    assert [int(v.version) for v in versions_of(store, name)] == [1]
    assert len(runs_of(store, req.job_id)) == 1


# ---------------------------------------------------------------------------------- errors


@pytest.mark.service
def test_bad_requests_are_refused_before_touching_mlflow(store: MlflowModelStore, tmp_path: Path) -> None:
    out = outputs(tmp_path)
    with pytest.raises(FileNotFoundError, match="outputs directory"):
        store.register(request(tmp_path / "missing", model_name()))
    with pytest.raises(ValueError, match="model name"):
        store.register(request(out, "bad name/with slash"))
    with pytest.raises(ValueError, match="job id"):
        store.register(request(out, model_name(), jid="x' OR '1'='1"))
    with pytest.raises(ValueError, match="limit"):
        store.list_versions(limit=0)


@pytest.mark.service
def test_mlflow_errors_surface_with_the_job_and_model_named(tmp_path: Path) -> None:
    store = MlflowModelStore(f"sqlite:///{tmp_path}/mlflow.db")
    gone = store.client.create_experiment("gone")
    store.client.delete_experiment(gone)
    req = request(outputs(tmp_path, {"accuracy": 0.9}), model_name(), experiment="gone")
    with pytest.raises(MlflowStoreError, match=r"'gone'.*deleted"):
        store.register(req)

    # MLflow refuses a param name: every delivery fails the same way (nothing is half-registered)
    name = model_name()
    req = request(outputs(tmp_path), name, params={"learning rate!": 0.1})
    for _ in range(2):
        with pytest.raises(MlflowStoreError, match=rf"registering job {req.job_id} as model '{name}'"):
            store.register(req)
    assert versions_of(store, name) == []
    [run] = runs_of(store, req.job_id)  # the one run it made is reused, and stays unfinished
    assert run.info.status == "RUNNING"


@pytest.mark.service
def test_a_workdir_job_carries_its_digest_and_uncommitted_diff_on_run_and_version(
    store: MlflowModelStore, tmp_path: Path
) -> None:
    """Provenance of a job that ran a packed folder: the commit it was at, which archive ran, and
    the hash of the edits on top (issue 16)."""
    name = model_name()
    digest, diff = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    req = request(outputs(tmp_path), name, git_repo=None, workdir_digest=digest, workdir_diff=diff)
    got = store.register(req)
    tags = store.client.get_run(got.run_id).data.tags
    assert tags["trainyard.workdir.digest"] == digest and tags["trainyard.workdir.uncommitted_diff"] == diff
    assert tags["mlflow.source.git.commit"] == COMMIT
    mv = store.client.get_model_version(name, "1")
    assert mv.tags["trainyard.workdir.digest"] == digest
    assert mv.tags["trainyard.workdir.uncommitted_diff"] == diff and mv.tags["git_commit"] == COMMIT
