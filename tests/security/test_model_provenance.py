"""The provenance the registry records (models bucket, MLflow tags) holds no source credential.

Against a real MLflow SQLite store (no server), as the registry's own store tests do.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from trainyard_contracts import JobSpec, lifecycle
from trainyard_registry.core import version_record
from trainyard_registry.mlflow_names import GIT_REPO_RUN_TAG, GIT_REPO_VERSION_TAG, JOB_ID_TAG, ModelRequest
from trainyard_registry.mlflow_store import MlflowModelStore

pytestmark = [pytest.mark.security, pytest.mark.service]

CREDENTIAL = "glpat-" + uuid.uuid4().hex
REPO = f"https://oauth2:{CREDENTIAL}@git.example.org/team/model.git"
CLEAN = "https://git.example.org/team/model.git"


def test_the_version_record_and_the_mlflow_tags_hold_no_credential(tmp_path: Path) -> None:
    spec = JobSpec(name="j", command=["true"], queue="alpha", source={"repo": REPO, "commit": "b" * 40})
    record = lifecycle.new_record("job" + uuid.uuid4().hex[:10], spec, datetime.now(UTC), "api")
    assert record.spec.source is not None and record.spec.source.repo == CLEAN

    store = MlflowModelStore(f"sqlite:///{tmp_path}/mlflow.db")
    out = tmp_path / "work" / "outputs"
    out.mkdir(parents=True)
    (out / "model.bin").write_bytes(b"w")
    # the job logged its own run, and MLflow recorded its checkout's remote with the credential
    experiment = store.client.create_experiment("jobs")
    store.client.create_run(experiment, tags={JOB_ID_TAG: record.job_id, GIT_REPO_RUN_TAG: REPO})
    registered = store.register(
        ModelRequest(
            job_id=record.job_id,
            attempt=1,
            queue="alpha",
            job_name="j",
            model_name="m-" + uuid.uuid4().hex[:8],
            outputs_dir=out,
            params={},
            git_repo=None,
            git_commit="b" * 40,
        )
    )
    [mv] = store.client.search_model_versions(f"name = '{registered.name}'")
    assert mv.tags[GIT_REPO_VERSION_TAG] == CLEAN
    version = version_record(record, registered)
    assert version.git_repo == CLEAN and version.queue == "alpha"
    assert CREDENTIAL not in version.model_dump_json()
