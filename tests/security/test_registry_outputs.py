"""The registry uploads a job's outputs to MLflow: only regular files inside the outputs tree.

Against a real MLflow SQLite store (no server), as the registry's own store tests do.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from trainyard_registry.mlflow_names import OUTPUTS_SKIPPED_TAG, ModelRequest
from trainyard_registry.mlflow_store import MlflowModelStore
from trainyard_registry.outputs import OutputLimits, OutputsRefused

pytestmark = [pytest.mark.security, pytest.mark.service]

MARKER = "registry-secret-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> MlflowModelStore:
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return MlflowModelStore(
        f"sqlite:///{db}", limits=OutputLimits(max_file_bytes=1000, max_total_bytes=1500, max_entries=50)
    )


def request(outputs_dir: Path, outputs_path: str = "outputs") -> ModelRequest:
    return ModelRequest(
        job_id="job" + uuid.uuid4().hex[:12],
        attempt=1,
        queue="alpha",
        job_name="leaky",
        model_name="m-" + uuid.uuid4().hex[:10],
        outputs_dir=outputs_dir,
        params={},
        git_repo=None,
        git_commit=None,
        outputs_path=outputs_path,
    )


def uploaded(store: MlflowModelStore, name: str) -> dict[str, bytes]:
    [mv] = store.client.search_model_versions(f"name = '{name}'")
    root = Path(unquote(urlparse(mv.source).path))
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("MLmodel")
    }


def test_symlinks_devices_hard_links_and_oversized_files_are_not_uploaded_and_are_reported(
    store: MlflowModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINYARD_TEST_MARKER", MARKER)  # in /proc/self/environ of this process
    outside = tmp_path / "host"
    outside.mkdir()
    (outside / "secret.txt").write_text(MARKER)
    out = tmp_path / "work" / "outputs"
    (out / "sub").mkdir(parents=True)
    (out / "model.pkl").write_bytes(b"weights")
    (out / "sub" / "ok.txt").write_text("fine")
    (out / "metrics.json").symlink_to("/proc/self/environ")
    (out / "leak").symlink_to("/proc/self/environ")
    (out / "sub" / "hostdir").symlink_to(outside, target_is_directory=True)
    (out / "hard").hardlink_to(outside / "secret.txt")
    (out / "big.bin").write_bytes(b"x" * 1001)
    os.mkfifo(out / "pipe")

    req = request(out)
    registered = store.register(req)

    files = uploaded(store, req.model_name)
    assert files == {"model.pkl": b"weights", "sub/ok.txt": b"fine"}
    assert registered.metrics == {}  # metrics.json was a link: not read
    [mv] = store.client.search_model_versions(f"name = '{req.model_name}'")
    report = mv.tags[OUTPUTS_SKIPPED_TAG]
    for entry in (
        "leak: a symlink",
        "metrics.json: a symlink",
        "sub/hostdir: a symlink",
        "hard: a hard link",
        "big.bin: 1001 bytes",
        "pipe: not a regular file",
    ):
        assert entry in report, report
    assert MARKER not in report


def test_the_total_cap_skips_what_does_not_fit(store: MlflowModelStore, tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    out.mkdir()
    (out / "a").write_bytes(b"a" * 900)
    (out / "b").write_bytes(b"b" * 900)  # 1800 > 1500 in total
    req = request(out)
    store.register(req)
    assert uploaded(store, req.model_name) == {"a": b"a" * 900}
    [mv] = store.client.search_model_versions(f"name = '{req.model_name}'")
    assert "b: 900 bytes, over what is left" in mv.tags[OUTPUTS_SKIPPED_TAG]


@pytest.mark.parametrize("linked", ["outputs", "models"])
def test_a_symlink_on_the_jobs_part_of_the_outputs_path_is_refused(
    store: MlflowModelStore, tmp_path: Path, linked: str
) -> None:
    host = tmp_path / "host"
    (host / "final").mkdir(parents=True)
    (host / "final" / "secret.txt").write_text(MARKER)
    (host / "secret.txt").write_text(MARKER)
    work = tmp_path / "work"
    work.mkdir()
    if linked == "outputs":  # outputs.path: outputs, the folder itself a link
        (work / "outputs").symlink_to(host, target_is_directory=True)
        req = request(work / "outputs", "outputs")
    else:  # outputs.path: models/final, a folder on the way a link
        (work / "models").symlink_to(host, target_is_directory=True)
        req = request(work / "models" / "final", "models/final")
    with pytest.raises(OutputsRefused, match="symlink is not followed"):
        store.register(req)
    assert store.client.search_model_versions(f"name = '{req.model_name}'") == []
