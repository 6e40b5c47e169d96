"""`trainyard simulate` runs the real simulator from the client's CLI (imported only when asked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainyard_client.cli import app

pytestmark = pytest.mark.unit


def test_simulate_prints_json_and_a_table():
    runner = CliRunner()
    result = runner.invoke(app, ["simulate", "--nodes", "3", "--duration", "300", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["nodes"] == 3 and report["jobs"]["submitted"] > 0
    table = runner.invoke(app, ["simulate", "--nodes", "3", "--duration", "300"])
    assert table.exit_code == 0 and "wait p50" in table.output


def test_simulate_refuses_a_bad_workload(tmp_path: Path):
    bad = tmp_path / "w.yaml"
    bad.write_text("nodes: []\nqueues: [{name: a}]\narrivals: [{queue: a, rate: 1}]\n")
    result = CliRunner().invoke(app, ["simulate", "--workload", str(bad)])
    assert result.exit_code == 2 and "nodes" in result.output


def test_the_client_does_not_import_the_scheduler_until_asked():
    code = (
        "import trainyard_client.cli, sys; "
        "assert not any(m.startswith('trainyard_scheduler') for m in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
