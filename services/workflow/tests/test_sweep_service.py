"""Sweeps on a real nats-server with the real submission, scheduler, local executor (real
processes) and workflow service: trials launched through the intake, their reports read from the
metrics stream, a worse trial pruned (its job ends cancelled, reason ``pruned``), and a workflow
service stopped mid-sweep and started again finishing the sweep without re-running a trial."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import nats
import pytest

from trainyard_contracts.sweeps import PRUNED_REASON, SWEEP_LABEL, SweepRecord, SweepReply
from trainyard_executor.app import create_app as executor_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_scheduler.app import create_app as scheduler_app
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_shared.testing.helpers import common_settings, eventually, running
from trainyard_submission.app import create_app as submission_app
from trainyard_submission.settings import SubmissionSettings
from trainyard_workflow.app import create_app as workflow_app
from trainyard_workflow.settings import WorkflowSettings

pytestmark = [pytest.mark.service, pytest.mark.workflow, pytest.mark.sweep, pytest.mark.local]

# a trial: reports score=x for `steps` steps, `delay` seconds apart
TRIAL = (
    "import sys, time, trainyard\n"
    "x, steps, delay = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])\n"
    "for step in range(steps):\n"
    "    trainyard.report(step, score=x)\n"
    "    time.sleep(delay)\n"
)

# good (x >= 5): 300 steps at once; bad: a step every 0.2 s for a minute
PRUNE_TRIAL = (
    "import sys, time, trainyard\n"
    "x = float(sys.argv[1])\n"
    "for step in range(300):\n"
    "    trainyard.report(step, score=x)\n"
    "    time.sleep(0 if x >= 5 else 0.2)\n"
)


def sweep_doc(**over):
    base = {
        "name": "toy",
        "job": {
            "name": "toy-trial",
            "command": [
                "python3",
                "-c",
                TRIAL,
                "${{ params.x }}",
                "${{ params.steps }}",
                "${{ params.delay }}",
            ],
        },
        "space": {"x": {"type": "float", "low": 0, "high": 10}},
        "objective": {"metric": "score", "direction": "maximize"},
    }
    return {**base, **over}


class Sweeps:
    def __init__(self, nc, prefix):
        self.nc, self.prefix = nc, prefix

    async def ask(self, verb: str, **body) -> SweepReply:
        msg = await self.nc.request(
            f"{self.prefix}.workflow.sweep-{verb}", json.dumps(body).encode(), timeout=30
        )
        return SweepReply.model_validate_json(msg.data)

    async def ended(self, sweep_id: str, timeout: float = 120) -> SweepRecord:
        async def probe():
            reply = await self.ask("get", name=sweep_id)
            return reply.sweep if reply.sweep and reply.sweep.state != "running" else None

        return await eventually(probe, timeout, f"sweep {sweep_id} ended")


@contextlib.asynccontextmanager
async def jobs_side(nats_server, prefix, tmp_path, **executor) -> AsyncIterator[Sweeps]:
    """The API, scheduler and executor (``executor``: more of its settings); the workflow service
    is started by each test."""
    common = common_settings(nats_server.url, prefix, tmp_path / "data")
    api = submission_app(common, SubmissionSettings(token="sweep-test-token-1"))
    scheduler = scheduler_app(common, SchedulerSettings(tick_seconds=0.2))
    settings = ExecutorSettings(id="exec-sw", cpu=4, memory=4096, heartbeat_seconds=0.5, **executor)
    executor_side = executor_app(common, settings)
    async with api.router.lifespan_context(api), running(scheduler), running(executor_side):
        nc = await nats.connect(nats_server.url)
        try:
            yield Sweeps(nc, prefix)
        finally:
            await nc.drain()


def workflow(nats_server, prefix, tmp_path):
    common = common_settings(nats_server.url, prefix, tmp_path / "data")
    return running(workflow_app(common, WorkflowSettings(reconcile_seconds=1)))


async def sweep_jobs(bus, sweep_id: str) -> list[str]:
    jobs_kv = await bus.js.key_value(bus.subjects.buckets.jobs)
    out = []
    for key in await jobs_kv.keys():
        record = await bus.record(key)
        if record and record.spec.labels.get(SWEEP_LABEL) == sweep_id:
            out.append(key)
    return sorted(out)


async def test_a_worse_trial_is_pruned_its_job_cancelled_with_reason_pruned(
    nats_server, prefix, tmp_path, bus
):
    # the grid's order: a good trial first (300 steps at once), then a bad one reporting every
    # 0.2 s for a minute: it can only end this soon by being pruned
    doc = sweep_doc(
        job={"name": "toy-trial", "command": ["python3", "-c", PRUNE_TRIAL, "${{ params.x }}"]},
        space={"x": {"type": "categorical", "choices": [10, 0]}},
        sampler={"type": "grid"},
        pruner={"type": "median", "n_startup_trials": 1},
        max_trials=2,
        max_parallel=1,
    )
    async with jobs_side(nats_server, prefix, tmp_path) as sweeps, workflow(nats_server, prefix, tmp_path):
        started = await sweeps.ask("create", sweep=doc)
        assert started.ok, started.errors
        sweep = await sweeps.ended(started.sweep.sweep_id, timeout=180)
    good, bad = sweep.trials
    assert good.state == "complete" and good.value == 10.0
    assert bad.state == "pruned" and bad.reason.startswith(PRUNED_REASON)
    assert sweep.state == "succeeded" and sweep.best == 0
    record = await bus.record(bad.job_id)
    assert record.state.value == "cancelled" and record.reason == PRUNED_REASON


async def test_a_restarted_workflow_service_finishes_the_sweep_without_rerunning_a_trial(
    nats_server, prefix, tmp_path, bus
):
    doc = sweep_doc(
        space={
            "x": {"type": "float", "low": 0, "high": 10},
            "steps": {"type": "int", "low": 2, "high": 3},
            "delay": {"type": "categorical", "choices": [0.5]},
        },
        sampler={"type": "random", "seed": 3},
        max_trials=4,
        max_parallel=1,
    )
    async with jobs_side(nats_server, prefix, tmp_path) as sweeps:
        async with workflow(nats_server, prefix, tmp_path):
            started = await sweeps.ask("create", sweep=doc)
            assert started.ok, started.errors
            sweep_id = started.sweep.sweep_id

            async def two_done():
                reply = await sweeps.ask("get", name=sweep_id)
                done = [t for t in reply.sweep.trials if t.state == "complete"]
                return reply.sweep if len(done) >= 2 else None

            before = await eventually(two_done, 120, "two trials complete")
        # stopped mid-sweep: a trial may be running, its end lands while no workflow service runs
        async with workflow(nats_server, prefix, tmp_path):
            sweep = await sweeps.ended(sweep_id, timeout=180)
    assert sweep.state == "succeeded"
    assert [t.state for t in sweep.trials] == ["complete"] * 4
    assert [t.job_id for t in sweep.trials[:2]] == [t.job_id for t in before.trials[:2]]
    assert [t.params for t in sweep.trials[:2]] == [t.params for t in before.trials[:2]]
    # one job per trial, ever
    assert await sweep_jobs(bus, sweep_id) == sorted(t.job_id for t in sweep.trials)
    best = max(sweep.trials, key=lambda t: t.value)
    assert sweep.best == best.number and best.value == best.params["x"]


async def test_bad_documents_get_field_errors(nats_server, prefix, tmp_path):
    async with jobs_side(nats_server, prefix, tmp_path) as sweeps, workflow(nats_server, prefix, tmp_path):
        bad = await sweeps.ask("create", sweep=sweep_doc(space={"x": {"type": "float", "low": 1, "high": 0}}))
        assert bad.status == 422 and [e.field for e in bad.errors] == ["space.x.high"]
        missing = await sweeps.ask("get", name="no-such-sweep")
        assert missing.status == 404
