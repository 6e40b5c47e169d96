"""The TF-Agents example (examples/rl/cartpole: a DQN on CartPole, TensorFlow 2.15 through the job's
runtime_env) swept with its own sweep file on the real stack. Marker ``rl`` (``make test-rl``, in
CI, not in ``make test``): its venv is ~1.9 GB, built once into ~/.cache/trainyard/runtime-envs
(TRAINYARD_TEST_RUNTIME_ENV_DIR); tf-agents 0.19.0 installs on Python <= 3.11 only."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from trainyard_contracts import MetricsBatch

from .test_sweep_cem import stable_env_dir
from .test_sweep_service import jobs_side, workflow

pytestmark = [
    pytest.mark.rl,
    pytest.mark.sweep,
    pytest.mark.local,  # not `service`: make test-service stays quick
    pytest.mark.timeout(1800),
    pytest.mark.skipif(sys.version_info >= (3, 12), reason="tf-agents 0.19.0 needs Python <= 3.11"),
]

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "rl" / "cartpole"


STEPS, EVERY = 1000, 250  # a third of the example's training, for time: 2 cores run it at ~1 min


def example_sweep(max_trials: int) -> dict:
    """The example's sweep as written, running the script from this work tree (no checkout), one
    trial at a time for a third of the steps (its rungs scaled to match)."""
    document = yaml.safe_load((EXAMPLE / "sweep.yaml").read_text())
    job = document["job"]
    job.pop("source")
    args = job["command"][2:]
    args[args.index("--steps") + 1] = str(STEPS)
    args[args.index("--eval-interval") + 1] = str(EVERY)
    job["command"] = ["python", str(EXAMPLE / "train.py"), *args]
    pruner = {**document["pruner"], "min_resource": EVERY}
    return {**document, "max_trials": max_trials, "max_parallel": 1, "pruner": pruner}


async def test_the_dqn_example_trains_reports_its_return_and_is_swept(nats_server, prefix, tmp_path, bus):
    async with (
        jobs_side(nats_server, prefix, tmp_path, runtime_env_dir=stable_env_dir()) as sweeps,
        workflow(nats_server, prefix, tmp_path),
    ):
        started = await sweeps.ask("create", sweep=example_sweep(max_trials=2))
        assert started.ok, started.errors
        sweep = await sweeps.ended(started.sweep.sweep_id, timeout=1500)  # a first venv build included
    assert sweep.state == "succeeded", (sweep.reason, [(t.state, t.reason) for t in sweep.trials])
    first = sweep.trials[0]  # nothing to compare with yet: never pruned
    assert first.state == "complete"
    last = await bus.js.get_last_msg(bus.subjects.streams.metrics, bus.subjects.metrics(first.job_id, 1))
    points = [p for p in MetricsBatch.model_validate_json(last.data).points if "average_return" in p.values]
    assert points[-1].step == STEPS and first.value == points[-1].values["average_return"]
    assert sorted(first.intermediate)[:2] == [EVERY, 2 * EVERY]  # reported every EVERY steps
    record = await bus.record(first.job_id)
    outputs = Path(record.outputs_uri.removeprefix("file://"))
    assert (outputs / "metrics.json").is_file() and (outputs / "policy" / "saved_model.pb").is_file()
