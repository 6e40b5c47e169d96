"""Metrics a job logs through MLflow reach the metrics stream while it runs, as trainyard.report's do:
the ``sitecustomize`` the executor puts beside the reporter wraps MLflow's client (real MLflow, a
sqlite store in the job's work dir)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from trainyard_contracts import JobSpec
from trainyard_executor.backends.jobmetrics import MLFLOW_FORWARDER, install_reporter
from trainyard_scheduler.testkit import quick_scheduler
from trainyard_shared.testing.helpers import running

from .jobs import PY, executor, points

pytestmark = [pytest.mark.insight]

JOB = (
    "import os, mlflow\n"
    "mlflow.set_tracking_uri('sqlite:///' + os.path.join(os.environ['TRAINYARD_WORKDIR'], 'mlflow.db'))\n"
    "with mlflow.start_run():\n"
    "    mlflow.log_metric('loss', 0.5, step=1)\n"
    "    mlflow.log_metrics({'loss': 0.25, 'val acc': 0.75}, step=2)\n"
)


@pytest.mark.service
@pytest.mark.local
async def test_mlflow_metrics_reach_the_stream(common, bus):
    async with running(quick_scheduler(common)), running(executor(common)):
        job_id = await bus.submit(JobSpec(name="mlflowed", command=[PY, "-c", JOB]))
        await bus.wait_state(job_id, "succeeded", timeout=120)
        got = await points(bus, job_id)
    assert [(p["step"], p["values"]) for p in got] == [
        (1, {"loss": 0.5}),
        (2, {"loss": 0.25, "val_acc": 0.75}),
    ]


@pytest.mark.integration
def test_the_forwarder_runs_the_sitecustomize_it_shadows_and_stays_out_of_the_way_outside_a_job(tmp_path):
    install_reporter(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import sys\nsys.chained = True\n")
    probe = (
        "import sys; print(getattr(sys, 'chained', False), "
        "any(type(f).__name__ == '_Finder' for f in sys.meta_path))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env["PYTHONPATH"] = f"{tmp_path / '.trainyard-py'}{os.pathsep}{other}"
    outside = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    env["TRAINYARD_METRICS_FILE"] = str(tmp_path / "m.jsonl")
    inside = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert outside.stdout.split() == ["True", "False"]  # no hook outside a job; the other one ran
    assert inside.stdout.split() == ["True", "True"]
    assert (tmp_path / ".trainyard-py" / MLFLOW_FORWARDER.name).stat().st_mode & 0o777 == 0o644
