"""A sweep step in the CLI, with no stack: `pipeline run --dry-run` shows it, a step's `file:` is
read (its keys over the file's, its job's source resolved against the sweep file's folder), and
`pipeline export --to kfp` names it as what KFP cannot express."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainyard_client.cli.app import app

pytestmark = [pytest.mark.unit, pytest.mark.sweep, pytest.mark.workflow]
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "pipelines" / "sweep-then-train.yaml"


def test_a_dry_run_shows_the_sweep_step_and_submits_nothing(wide_consoles: None) -> None:
    result = CliRunner().invoke(app, ["pipeline", "run", str(EXAMPLE), "-p", "trials=2", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dry run: nothing submitted" in result.output
    assert "search sweep cem-cartpole-search: 2 trials, 2 at once" in result.output
    assert "maximize mean_return; sampler tpe, pruner asha" in result.output
    assert "train ← search job cem-cartpole-best" in result.output


def test_a_sweep_steps_file_is_read_with_the_steps_keys_over_it(wide_consoles: None) -> None:
    result = CliRunner().invoke(app, ["pipeline", "run", str(EXAMPLE), "--dry-run", "-o", "json"])
    assert result.exit_code == 0, result.output
    sweep = json.loads(result.output)["steps"][0]["sweep"]
    assert sweep["name"] == "cem-cartpole-search" and sweep["max_trials"] == 4  # the pipeline's default
    assert sweep["space"]["population"] == {"type": "int", "low": 8, "high": 48, "step": 8}  # the file's
    assert sweep["job"]["source"]["repo"] == str(ROOT)  # ../../.. from examples/rl/cem


def test_a_missing_sweep_file_and_a_bad_sweep_name_their_fields(tmp_path: Path, wide_consoles: None) -> None:
    doc = tmp_path / "p.yaml"
    doc.write_text("name: p\nsteps:\n- {name: s, sweep: {file: nosuch.yaml}}\n")
    missing = CliRunner().invoke(app, ["pipeline", "run", str(doc), "--dry-run"])
    assert missing.exit_code == 2 and "steps.0.sweep.file" in missing.output
    (tmp_path / "sweep.yaml").write_text(
        "name: s\njob: {name: t, command: ['true', '${{ params.lr }}']}\n"
        "space: {lr: {type: float, low: 1, high: 0.1}}\nobjective: {metric: m, direction: maximize}\n"
    )
    doc.write_text("name: p\nsteps:\n- {name: s, sweep: {file: sweep.yaml}}\n")
    bad = CliRunner().invoke(app, ["pipeline", "run", str(doc), "--dry-run"])
    assert bad.exit_code == 2 and "steps.0.sweep.space.lr.high" in bad.output


def test_kfp_export_refuses_a_sweep_step(wide_consoles: None) -> None:
    result = CliRunner().invoke(app, ["pipeline", "export", "--to", "kfp", str(EXAMPLE)])
    assert result.exit_code == 2 and "steps.0.sweep" in result.output
