"""The light RL example (examples/rl/cem: the cross-entropy method on CartPole, gymnasium + numpy
through the job's runtime_env) swept with its own sweep file on the real stack: trials report the
mean return per iteration, ASHA may stop the ones behind, the best one is the sweep's best. The
venv is built once into ~/.cache/trainyard/runtime-envs (TRAINYARD_TEST_RUNTIME_ENV_DIR)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from trainyard_contracts import MetricsBatch
from trainyard_contracts.sweeps import PRUNED_REASON

from .test_sweep_service import jobs_side, workflow

pytestmark = [pytest.mark.service, pytest.mark.workflow, pytest.mark.sweep, pytest.mark.local]

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "rl" / "cem"


def stable_env_dir() -> Path:
    configured = os.environ.get("TRAINYARD_TEST_RUNTIME_ENV_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "trainyard" / "runtime-envs"


def example_sweep(max_trials: int) -> dict:
    """The example's sweep as written, running the script from this work tree (no checkout)."""
    document = yaml.safe_load((EXAMPLE / "sweep.yaml").read_text())
    job = document["job"]
    job.pop("source")
    job["command"] = ["python", str(EXAMPLE / "train.py"), *job["command"][2:]]
    return {**document, "max_trials": max_trials}


async def test_the_cem_example_sweep_learns_cartpole_and_asha_judges_its_trials(
    nats_server, prefix, tmp_path, bus
):
    doc = example_sweep(max_trials=4)
    async with (
        jobs_side(nats_server, prefix, tmp_path, runtime_env_dir=stable_env_dir()) as sweeps,
        workflow(nats_server, prefix, tmp_path),
    ):
        started = await sweeps.ask("create", sweep=doc)
        assert started.ok, started.errors
        sweep = await sweeps.ended(started.sweep.sweep_id, timeout=600)  # a first venv build included
    assert sweep.state == "succeeded", (sweep.reason, [(t.state, t.reason) for t in sweep.trials])
    complete = [t for t in sweep.trials if t.state == "complete"]
    assert complete and {t.state for t in sweep.trials} <= {"complete", "pruned"}
    for trial in complete:  # 20 iterations reported; the objective is the last one's mean return
        last = await bus.js.get_last_msg(bus.subjects.streams.metrics, bus.subjects.metrics(trial.job_id, 1))
        points = MetricsBatch.model_validate_json(last.data).points
        point = [p for p in points if "mean_return" in p.values][-1]
        assert point.step == 19 and trial.value == point.values["mean_return"]
    best = sweep.best_trial()
    assert best.value == max(t.value for t in complete) and best.value > 20  # random play: ~20
    for trial in sweep.trials:
        record = await bus.record(trial.job_id)
        if trial.state == "pruned":
            # cancelled as pruned, or it finished before the cancel reached it: still pruned, as
            # docs/workflows.md says (a loaded machine makes that race common)
            assert (record.state.value, record.reason) == ("cancelled", PRUNED_REASON) or (
                record.state.value == "succeeded"
            ), (record.state, record.reason)
        else:
            assert (
                record.state.value == "succeeded"
                and record.spec.params["population"] == trial.params["population"]
            )
