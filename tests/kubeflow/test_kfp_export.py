"""`trainyard pipeline export --to kfp`: the YAML the kfp SDK compiles, run by kfp.local.

For real: the kfp 2.17.3 SDK (in its own venv, `make kfp-venv`: its pins conflict with the
workspace's) compiles the pipeline, and `kfp.local.SubprocessRunner(use_venv=False)` runs it, task
by task, as plain processes on this machine. Not here: a Kubeflow Pipelines cluster (no
kube-apiserver can run on this machine), so container components are compiled and checked, not run
(the subprocess runner runs lightweight Python components only, which is what a command-only step
becomes). Skipped without the SDK, except with TRAINYARD_TEST_REQUIRE_KFP=1 (`make test-kubeflow`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainyard_client.kfpexport import KfpMissing, find_kfp_python

pytestmark = pytest.mark.kubeflow

RUN_LOCALLY = """
import sys
from kfp import components, local
local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=sys.argv[2], raise_on_error=False)
components.load_component_from_file(sys.argv[1])()
"""

# each step marks that it ran: OUT/<name>[-<array index>], holding its text or the array's size
MARK = """
import os, pathlib, sys
index = os.environ.get("TRAINYARD_ARRAY_INDEX")
name = sys.argv[1] + ("-" + index if index is not None else "")
text = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("TRAINYARD_ARRAY_COUNT", "x")
pathlib.Path(os.environ["OUT"], name).write_text(text)
"""

PIPELINE = """
name: kfp-local
params: {greeting: hello}
steps:
  - name: prepare
    job: {name: prepare, command: [python3, "%(mark)s", prepare, "${{ params.greeting }}"],
          env: {OUT: "%(out)s"}, queue: default}
  - name: fit
    depends: [prepare]
    array: "0-1"
    job: {name: fit, command: [python3, "%(mark)s", fit], env: {OUT: "%(out)s"}}
  - name: evaluate
    depends: [fit]
    job: {name: evaluate, command: [python3, -c, "import sys; sys.exit(3)"]}
  - name: publish
    depends: [evaluate]
    job: {name: publish, command: [python3, "%(mark)s", publish], env: {OUT: "%(out)s"}}
  - name: report
    depends: {evaluate: finished}
    job: {name: report, command: [python3, "%(mark)s", report], env: {OUT: "%(out)s"}}
"""


@pytest.fixture(scope="module")
def kfp_python() -> str:
    try:
        return find_kfp_python()
    except KfpMissing as exc:
        if os.environ.get("TRAINYARD_TEST_REQUIRE_KFP") == "1":
            raise
        pytest.skip(str(exc))


def _export(doc: Path, out: Path, *extra: str, kfp_python: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRAINYARD_KFP_PYTHON": kfp_python}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "trainyard_client.cli",
            "pipeline",
            "export",
            "--to",
            "kfp",
            str(doc),
            "-o",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_an_exported_pipeline_runs_under_kfp_local_with_trainyards_semantics(
    tmp_path: Path, kfp_python: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    doc = tmp_path / "pipeline.yaml"
    mark = tmp_path / "mark.py"
    mark.write_text(MARK)
    doc.write_text(PIPELINE % {"out": out, "mark": mark})
    ir = tmp_path / "pipeline.kfp.yaml"
    exported = _export(doc, ir, "-p", "greeting=bonjour", kfp_python=kfp_python)
    assert exported.returncode == 0, exported.stderr
    assert "steps.0.job.queue" in exported.stderr  # dropped, and said so

    compiled = yaml.safe_load(ir.read_text())
    root = compiled["root"]["dag"]["tasks"]
    assert set(root) == {"prepare", "for-loop-2", "evaluate", "publish", "report"}
    assert root["report"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert root["evaluate"]["dependentTasks"] == ["for-loop-2"]

    ran = subprocess.run(
        [kfp_python, "-c", RUN_LOCALLY, str(ir), str(tmp_path / "root")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    log = re.sub(r"\x1b\[[0-9;]*m", "", ran.stdout + ran.stderr)
    assert (out / "prepare").read_text() == "bonjour", log
    assert (out / "fit-0").read_text() == "2" and (out / "fit-1").read_text() == "2", log
    assert "Task 'evaluate' finished with status FAILURE" in log
    assert not (out / "publish").exists(), "a step after a failed one ran"
    assert (out / "report").exists(), "a step on 'finished' did not run after a failure"
    assert "Pipeline 'kfp-local' finished with status FAILURE" in log


def test_a_container_step_compiles_to_its_image_and_argv_with_the_array_and_timeout_wrapped(
    tmp_path: Path, kfp_python: str
) -> None:
    doc = tmp_path / "pipeline.yaml"
    doc.write_text(
        "name: containers\nsteps:\n"
        "- name: train\n  array: '0-3%2'\n  job: {name: train, image: 'ghcr.io/acme/train:1', "
        "command: [python, train.py, --lr, '0.1'], timeout: 60, retries: {limit: 2, backoff: 5},"
        " resources: {cpu: 2, memory: 2Gi, gpu: 1}, env: {A: b}}\n"
    )
    ir = tmp_path / "out.yaml"
    exported = _export(doc, ir, kfp_python=kfp_python)
    assert exported.returncode == 0, exported.stderr
    compiled = yaml.safe_load(ir.read_text())
    (executor,) = compiled["deploymentSpec"]["executors"].values()
    container = executor["container"]
    assert container["image"] == "ghcr.io/acme/train:1"
    assert container["command"][:4] == ["timeout", "-k", "30", "60"]
    assert container["command"][4] == "env" and "TRAINYARD_ARRAY_INDEX=" in container["command"][5]
    assert container["command"][6:] == ["TRAINYARD_ARRAY_COUNT=4", "python", "train.py", "--lr", "0.1"]
    assert container["env"] == [{"name": "A", "value": "b"}]
    assert container["resources"]["resourceCpuLimit"] == "2"
    assert container["resources"]["resourceMemoryLimit"] == "2048Mi"
    assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    loop = compiled["root"]["dag"]["tasks"]["for-loop-2"]
    assert loop["iteratorPolicy"]["parallelismLimit"] == 2
    assert yaml.safe_load(loop["parameterIterator"]["items"]["raw"]) == [0, 1, 2, 3]
    inner = compiled["components"]["comp-for-loop-2"]["dag"]["tasks"]["train"]
    assert inner["retryPolicy"]["maxRetryCount"] == 2 and inner["retryPolicy"]["backoffDuration"] == "5s"
