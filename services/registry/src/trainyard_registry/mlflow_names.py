"""What the registry writes on MLflow runs and model versions (the tag names), what it is asked
to register and what it answers: shared by the store, the service's core and the tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

JOB_ID_TAG = "trainyard.job_id"
ATTEMPT_TAG = "trainyard.attempt"
QUEUE_TAG = "trainyard.queue"
JOB_NAME_TAG = "trainyard.job_name"
MODEL_ID_TAG = "trainyard.model_id"
CREATED_BY_TAG = "trainyard.created_by"
CREATED_BY_REGISTRY = "registry"
GIT_COMMIT_RUN_TAG = "mlflow.source.git.commit"
GIT_REPO_RUN_TAG = "mlflow.source.git.repoURL"
GIT_COMMIT_VERSION_TAG = "git_commit"
GIT_REPO_VERSION_TAG = "git_repo"
# a job that ran a packed workdir (spec workdir): which archive, and the hash of what was not
# committed on top of git_commit (absent: the folder was clean, or not a git checkout)
WORKDIR_DIGEST_TAG = "trainyard.workdir.digest"
WORKDIR_DIFF_TAG = "trainyard.workdir.uncommitted_diff"
OUTPUTS_SKIPPED_TAG = "trainyard.outputs_skipped"  # what of the outputs was not uploaded, and why
MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # the logged model's link to its versions (as MLflow does)
METRICS_FILE = "metrics.json"
# where the version came from (docs/models.md, "Lineage"), on the run and the version
EXECUTOR_TAG = "trainyard.executor"
BACKEND_TAG = "trainyard.backend"
IMAGE_TAG = "trainyard.image"
IMAGE_DIGEST_TAG = "trainyard.image_digest"
RUNTIME_LOCK_TAG = "trainyard.runtime_lock"
PIPELINE_RUN_TAG = "trainyard.pipeline_run"
PIPELINE_STEP_TAG = "trainyard.pipeline_step"
SWEEP_TAG = "trainyard.sweep"
SWEEP_TRIAL_TAG = "trainyard.sweep_trial"
# the lineage a version's own tags hold as they are, by the field of VersionInfo they fill (the
# store reads them so; a test checks each is a field)
VERSION_TAGS = {
    "job_id": JOB_ID_TAG,
    "git_repo": GIT_REPO_VERSION_TAG,
    "git_commit": GIT_COMMIT_VERSION_TAG,
    "workdir_digest": WORKDIR_DIGEST_TAG,
    "uncommitted_diff": WORKDIR_DIFF_TAG,
    "image": IMAGE_TAG,
    "image_digest": IMAGE_DIGEST_TAG,
    "runtime_lock": RUNTIME_LOCK_TAG,
    "executor_id": EXECUTOR_TAG,
    "backend": BACKEND_TAG,
    "pipeline_run": PIPELINE_RUN_TAG,
    "pipeline_step": PIPELINE_STEP_TAG,
    "sweep": SWEEP_TAG,
    "sweep_trial": SWEEP_TRIAL_TAG,
}


class MlflowStoreError(RuntimeError):
    """An MLflow call failed while registering or reading models (the cause is chained)."""


@dataclass(frozen=True)
class ModelRequest:
    job_id: str
    attempt: int
    queue: str
    job_name: str
    model_name: str  # registered-model name, matches [A-Za-z0-9_-]+
    outputs_dir: Path  # directory the job wrote its model into (local filesystem)
    params: dict[str, str | int | float | bool]  # the job spec's params
    git_repo: str | None
    git_commit: str | None
    experiment: str = "trainyard"
    # the trailing part of outputs_dir that the job controls (the spec's outputs.path): no symlink
    # is followed there; "" = only outputs_dir's own last component
    outputs_path: str = ""
    workdir_digest: str | None = None
    workdir_diff: str | None = None
    # what made the job, on the run and the version: a sweep trial's sweep id and trial number
    lineage: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: int
    run_id: str
    model_id: str | None
    source: str
    job_id: str
    git_commit: str | None
    metrics: dict[str, float]
    created_at: float  # epoch seconds


def sqlite_db_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (absolute), else None."""
    if not tracking_uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(tracking_uri).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).resolve()


def sqlite_artifact_dir(tracking_uri: str) -> Path | None:
    """``<db dir>/mlartifacts`` for a ``sqlite:///`` file store, else None (the server decides)."""
    db = sqlite_db_path(tracking_uri)
    return db.parent / "mlartifacts" if db is not None else None
