"""`trainyard submit` with a workdir folder, and a local source with uncommitted edits: what the
CLI says before anything is sent. (The upload and the run: tests/integration/test_workdir_jobs.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainyard_client.cli import app

runner = CliRunner()


def _git(folder: Path, *args: str) -> None:
    base = ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*base, *args], check=True, capture_output=True)


@pytest.mark.unit
def test_a_folder_that_cannot_be_packed_is_named_before_contacting_the_server(
    tmp_path, closed_port_url, wide_consoles
):
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("print(1)\n")
    (project / "data").symlink_to("/etc")
    (tmp_path / "job.yaml").write_text("name: wd\ncommand: [python, train.py]\nworkdir: project\n")
    result = runner.invoke(
        app, ["--url", closed_port_url, "--token", "t", "submit", str(tmp_path / "job.yaml")]
    )
    assert result.exit_code == 2, result.output
    assert "cannot be packed" in result.output and "data is a symbolic link to '/etc'" in result.output
    assert "cannot reach" not in result.output  # refused here, nothing was sent


@pytest.mark.unit
def test_a_local_source_with_uncommitted_edits_warns_at_submit(tmp_path, closed_port_url, wide_consoles):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "train.py").write_text("print(1)\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "x")
    spec = tmp_path / "job.yaml"
    spec.write_text("name: s\ncommand: [python, train.py]\nsource: {repo: repo}\n")
    args = ["--url", closed_port_url, "--token", "t", "submit", str(spec)]
    assert "uncommitted changes" not in runner.invoke(app, args).output  # clean: no warning
    (repo / "train.py").write_text("print(2)\n")
    result = runner.invoke(app, args)
    assert "uncommitted changes" in result.output and "workdir:" in result.output
