"""The KFP plan of a pipeline (pure: no kfp SDK needed), and the CLI's answers around it.

What the SDK then compiles and how ``kfp.local`` runs it: tests/kubeflow/test_kfp_export.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from trainyard_client.cli.app import app
from trainyard_client.kfpexport import KFP_PYTHON_ENV, KFP_VERSION, plan_kfp
from trainyard_contracts import SpecError
from trainyard_contracts.workflow import validate_pipeline

pytestmark = pytest.mark.unit


def _spec(*steps: dict[str, Any], params: dict[str, Any] | None = None) -> Any:
    return validate_pipeline({"name": "p", "params": params or {}, "steps": list(steps)})


def _step(name: str, **extra: Any) -> dict[str, Any]:
    job = extra.pop("job", {})
    return {"name": name, "job": {"name": name, "command": ["true"], **job}, **extra}


def _errors(spec: Any) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        plan_kfp(spec)
    return {e.field: e.message for e in caught.value.errors}


def test_steps_are_planned_in_dependency_order_with_their_trigger() -> None:
    plan = plan_kfp(
        _spec(
            _step("report", depends={"train": "finished", "prepare": "finished"}),
            _step("train", depends=["prepare"], array="0-6:3%2"),
            _step("prepare", job={"image": "busybox:1", "env": {"A": "1"}}),
        )
    )
    steps = plan.document["steps"]
    assert [s["name"] for s in steps] == ["prepare", "train", "report"]
    prepare, train, report = steps
    assert prepare["kind"] == "container" and prepare["image"] == "busybox:1" and prepare["env"] == {"A": "1"}
    assert train["kind"] == "command" and train["image"] is None
    assert train["after"] == ["prepare"] and not train["ignore_upstream_failure"]
    assert train["array"] == {"indices": [0, 3, 6], "count": 3, "parallelism": 2}
    assert sorted(report["after"]) == ["prepare", "train"] and report["ignore_upstream_failure"]


def test_a_command_only_step_takes_the_default_image_and_a_shell_step_runs_sh() -> None:
    plan = plan_kfp(_spec(_step("s", job={"command": ["echo $HOME"], "shell": True})), "python:3.12")
    (step,) = plan.document["steps"]
    assert step["image"] == "python:3.12"
    assert step["argv"] == ["/bin/sh", "-c", "echo $HOME"]


def test_parameters_are_substituted_before_the_plan() -> None:
    spec = validate_pipeline(
        {
            "name": "p",
            "params": {"msg": "hi"},
            "steps": [_step("s", job={"command": ["echo", "${{ params.msg }}"]})],
        },
        {"msg": "over"},
    )
    assert plan_kfp(spec).document["steps"][0]["argv"] == ["echo", "over"]


def test_resources_retries_timeout_and_cache_are_carried() -> None:
    plan = plan_kfp(
        _spec(
            _step(
                "s",
                cache=True,
                job={
                    "resources": {"cpu": 2, "memory": "1Gi", "gpu": 1},
                    "timeout": 90,
                    "retries": {"limit": 2},
                },
            )
        )
    )
    (step,) = plan.document["steps"]
    assert (step["cpu"], step["memory_mib"], step["gpu"]) == (2.0, 1024, 1)
    assert step["timeout_seconds"] == 90 and step["retries"] == {"limit": 2, "backoff_seconds": 10.0}
    assert step["cache"] is True


def test_what_kfp_cannot_express_is_refused_naming_the_step_and_field() -> None:
    errors = _errors(
        _spec(
            _step("a"),
            _step("b", depends={"a": "failed"}),
            _step("c", depends={"a": "succeeded", "b": "finished"}),
            _step("d", job={"replicas": 2, "runtime_env": {"pip": ["x"]}}),
        )
    )
    assert "another failed" in errors["steps.1.depends.a"]
    assert "same condition" in errors["steps.2.depends"]
    assert "TrainJob" in errors["steps.3.job.replicas"]
    assert "image" in errors["steps.3.job.runtime_env"]


def test_a_step_using_another_steps_outputs_is_refused() -> None:
    errors = _errors(
        _spec(
            _step("a"),
            _step("b", depends=["a"], job={"env": {"LR": "${{ steps.a.outputs.lr }}"}}),
        )
    )
    assert "outputs" in errors["steps.1.job.env.LR"]


def test_one_replica_written_out_is_not_a_gang() -> None:
    assert plan_kfp(_spec(_step("a", job={"replicas": 1}))).document["steps"][0]["name"] == "a"


def test_trainyards_own_fields_are_dropped_and_named() -> None:
    plan = plan_kfp(_spec(_step("a", job={"queue": "gpu", "priority": 5, "labels": {"team": "x"}})))
    assert plan.dropped == ("steps.0.job.labels", "steps.0.job.priority", "steps.0.job.queue")


def test_the_cli_names_the_field_kfp_cannot_express(tmp_path: Path, wide_consoles: None) -> None:
    doc = tmp_path / "p.yaml"
    doc.write_text(
        "name: p\nsteps:\n- {name: a, job: {name: a, command: ['true']}}\n"
        "- {name: b, depends: {a: failed}, job: {name: b, command: ['true']}}\n"
    )
    result = CliRunner().invoke(app, ["pipeline", "export", "--to", "kfp", str(doc)])
    assert result.exit_code == 2
    assert "steps.1.depends.a" in result.output


def test_the_cli_says_how_to_get_kfp_when_it_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wide_consoles: None
) -> None:
    doc = tmp_path / "p.yaml"
    doc.write_text("name: p\nsteps:\n- {name: a, job: {name: a, command: ['true']}}\n")
    monkeypatch.setenv(KFP_PYTHON_ENV, "/usr/bin/python3-without-kfp-" + tmp_path.name)
    result = CliRunner().invoke(app, ["pipeline", "export", "--to", "kfp", str(doc)])
    assert result.exit_code == 3
    assert "cannot import kfp" in result.output and "make kfp-venv" in result.output


def test_the_makefile_builds_the_sdk_version_the_exporter_names() -> None:
    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    assert f"kfp=={KFP_VERSION}" in makefile


def test_the_pipeline_in_docs_kubeflow_md_exports() -> None:
    """The copy-paste example of docs/kubeflow.md stays one the exporter accepts, as it says."""
    import re

    import yaml

    page = (Path(__file__).parents[2] / "docs" / "kubeflow.md").read_text()
    document = re.search(r"cat > /tmp/etl.yaml <<'EOF'\n(.*?)\nEOF", page, re.S)
    assert document is not None
    spec = validate_pipeline(yaml.safe_load(document.group(1)), {"rows": 500})
    steps = {s["name"]: s for s in plan_kfp(spec).document["steps"]}
    assert steps["extract"]["argv"][-1] == "print('extracted 500 rows')"
    assert steps["fit"]["array"]["parallelism"] == 2 and steps["report"]["ignore_upstream_failure"]
