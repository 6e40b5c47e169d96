"""``trainyard.dataset(...)``, the in-job helper that records an input dataset (docs/models.md,
"Lineage"): the line it writes for the registry, its digests, and nothing outside a job."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from trainyard_executor.reporter import trainyard

pytestmark = pytest.mark.unit


def test_outside_a_job_it_records_nothing_and_returns_the_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRAINYARD_JOB_ID", raising=False)
    monkeypatch.setenv("TRAINYARD_OUTPUT_DIR", str(tmp_path / "out"))
    data = tmp_path / "d.csv"
    data.write_bytes(b"a,b\n1,2\n")
    assert trainyard.dataset("d", data) == "sha256:" + hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    assert not (tmp_path / "out").exists()


def test_in_a_job_it_appends_one_line_per_dataset_with_a_folder_hashed_by_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINYARD_JOB_ID", "job1")
    monkeypatch.setenv("TRAINYARD_OUTPUT_DIR", str(tmp_path / "out"))
    folder = tmp_path / "images"
    (folder / "b").mkdir(parents=True)
    (folder / "a.png").write_bytes(b"1")
    (folder / "b" / "c.png").write_bytes(b"2")
    first = trainyard.dataset("images", folder)
    (folder / "b" / "c.png").write_bytes(b"3")  # one file changed: another digest
    assert trainyard.dataset("images", folder) != first
    assert trainyard.dataset("remote", "s3://bucket/x.parquet", context="validation") is None
    lines = [json.loads(x) for x in (tmp_path / "out" / "datasets.jsonl").read_text().splitlines()]
    assert [(x["name"], x["source_type"], x["context"]) for x in lines] == [
        ("images", "local", "training"),
        ("images", "local", "training"),
        ("remote", "s3", "validation"),
    ]
    assert lines[0]["digest"] == first and lines[0]["source"] == str(folder)
    assert lines[2]["digest"] is None and lines[2]["source"] == "s3://bucket/x.parquet"
