"""The workflow service's NATS user is enough, and no more is used: a pipeline with an array step
runs with every service as its own user (deploy/nats/nats.conf, after the provision step as
admin). The request comes as the submission service would send it (its user); the workflow submits
through the intake, follows the job events, writes its bucket and events; the server logs no
permission violation at all (a refused call a service retried would show there)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import pytest

from trainyard_contracts import Subjects
from trainyard_contracts.runs import PipelineReply
from trainyard_contracts.schedules import ScheduleReply
from trainyard_executor.app import create_app as executor_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_scheduler.app import create_app as scheduler_app
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_shared.testing.helpers import eventually, running
from trainyard_submission.app import create_app as submission_app
from trainyard_submission.settings import SubmissionSettings
from trainyard_workflow.app import create_app as workflow_app
from trainyard_workflow.settings import WorkflowSettings

from .natsconf import inbox_of, password_for, provisioned, secured_server, violations
from .test_nats_users_job_path import as_user

pytestmark = [pytest.mark.nats_auth, pytest.mark.service, pytest.mark.local, pytest.mark.workflow]
S = Subjects("trainyard")
PIPELINE = {
    "name": "perm-pipeline",
    "steps": [
        {"name": "a", "cache": True, "job": {"name": "a", "command": ["true"]}},  # its step cache bucket
        {"name": "b", "depends": ["a"], "array": "0-2%2", "job": {"name": "b", "command": ["true"]}},
        {"name": "c", "depends": ["b"], "job": {"name": "c", "command": ["false"]}},
        {"name": "d", "depends": ["c"], "job": {"name": "d", "command": ["true"]}},
    ],
}


async def as_submission(server):
    """A connection as the submission service's user: how the API asks the workflow service."""
    return await nats.connect(
        server.url,
        user="submission",
        password=password_for("submission"),
        inbox_prefix=inbox_of("submission"),
    )


@contextlib.asynccontextmanager
async def every_service_as_its_own_user(tmp_path) -> AsyncIterator[tuple[Any, Any]]:
    """The API, scheduler, an executor and the workflow service, each as its own NATS user, on a
    secured server (provisioned as admin); yields the server and a connection as the API asks."""
    data = tmp_path / "data"
    with secured_server(tmp_path / "store") as server:
        await provisioned(server)
        api = submission_app(as_user(server.url, "submission", data), SubmissionSettings(token="t" * 24))
        scheduler = scheduler_app(as_user(server.url, "scheduler", data), SchedulerSettings(tick_seconds=0.2))
        executor = executor_app(
            as_user(server.url, "executor-exec-auth", data),
            ExecutorSettings(id="exec-auth", cpu=4, memory=4096, gpu=0, heartbeat_seconds=0.5),
        )
        workflow = workflow_app(as_user(server.url, "workflow", data), WorkflowSettings(reconcile_seconds=1))
        async with api.router.lifespan_context(api), running(scheduler), running(executor), running(workflow):
            asker = await as_submission(server)
            try:
                yield server, asker
            finally:
                await asker.drain()


async def test_a_pipeline_runs_with_the_workflow_as_its_own_nats_user(tmp_path):
    async with every_service_as_its_own_user(tmp_path) as (server, asker):

        async def ask(kind: str, **body: object) -> PipelineReply:
            msg = await asker.request(S.workflow_request(kind), json.dumps(body).encode(), timeout=30)
            return PipelineReply.model_validate_json(msg.data)

        async def run_once():
            started = await ask("run", pipeline=PIPELINE)
            assert started.ok, started.errors

            async def ended():
                reply = await ask("status", run_id=started.run.run_id)
                return reply.run if reply.run.state != "running" else None

            return await eventually(ended, 90, "the pipeline ended")

        run = await run_once()
        again = await run_once()  # step a from the step cache: read and written as its user
        # a hit asks whether an earlier step's outputs folder is still stored: its meta only
        from trainyard_shared.blobs.store import has_blob, open_store

        workflow_nc = await nats.connect(
            server.url, user="workflow", password=password_for("workflow"), inbox_prefix=inbox_of("workflow")
        )
        try:
            store = await open_store(workflow_nc.jetstream(), S.step_outputs_bucket)
            assert await has_blob(store, "sha256:" + "0" * 64) is False
        finally:
            await workflow_nc.drain()
    states = {name: step.state.value for name, step in run.steps.items()}
    assert states == {"a": "succeeded", "b": "succeeded", "c": "failed", "d": "skipped"}
    assert run.state.value == "failed" and sorted(run.steps["b"].jobs) == [0, 1, 2]
    assert again.steps["a"].cache is not None and again.steps["a"].cache.state == "hit"
    assert violations(server) == []


class SimulatedClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def test_a_schedule_fires_with_the_workflow_as_its_own_nats_user(tmp_path):
    """Its schedules bucket and its own lease key (never the scheduler's) are enough: a tick fires,
    a backfill starts its ticks, suspend and delete work, and the server logs no violation."""
    data = tmp_path / "data"
    start = datetime(2026, 6, 1, 10, 0, 30, tzinfo=UTC)
    clock = SimulatedClock(start)
    schedule = {"name": "perm-every-minute", "cron": "* * * * *", "pipeline": PIPELINE}
    with secured_server(tmp_path / "store") as server:
        await provisioned(server)
        api = submission_app(as_user(server.url, "submission", data), SubmissionSettings(token="t" * 24))
        settings = WorkflowSettings(schedule_tick_seconds=0.05, replica_id="perm")
        workflow = workflow_app(as_user(server.url, "workflow", data), settings, clock)
        async with api.router.lifespan_context(api), running(workflow):
            asker = await as_submission(server)
            try:

                async def ask(verb: str, **body: object) -> ScheduleReply:
                    subject = S.workflow_request(f"schedule-{verb}")
                    msg = await asker.request(subject, json.dumps(body, default=str).encode(), timeout=30)
                    return ScheduleReply.model_validate_json(msg.data)

                assert (await ask("create", schedule=schedule)).status == 201
                clock.now = start + timedelta(minutes=1)

                async def fired():
                    record = (await ask("get", name="perm-every-minute")).schedule
                    return record if record is not None and record.fired == 1 and not record.pending else None

                await eventually(fired, 30, "the tick fired")
                before = start.replace(second=0)
                window = {"start": before - timedelta(minutes=3), "end": before - timedelta(minutes=2)}
                backfilled = await ask("backfill", name="perm-every-minute", **window)
                assert backfilled.ok and len(backfilled.run_ids or []) == 2, backfilled.errors
                assert (await ask("suspend", name="perm-every-minute")).ok
                assert (await ask("delete", name="perm-every-minute")).ok
            finally:
                await asker.drain()
        assert violations(server) == []


async def test_a_sweep_prunes_a_trial_with_the_workflow_as_its_own_nats_user(tmp_path):
    """Its sweeps bucket, its durable on the metrics stream, the last batch of a trial's metrics
    (one message read) and the cancel_requested event of a pruned trial's job are enough."""
    from trainyard_contracts.sweeps import SweepReply

    script = (
        "import sys, time, trainyard\n"
        "x = float(sys.argv[1])\n"
        "for step in range(300):\n"
        "    trainyard.report(step, score=x)\n"
        "    time.sleep(0 if x >= 5 else 0.2)\n"
    )
    sweep = {
        "name": "perm-sweep",
        "job": {"name": "perm-trial", "command": ["python3", "-c", script, "${{ params.x }}"]},
        "space": {"x": {"type": "categorical", "choices": [10, 0]}},
        "objective": {"metric": "score", "direction": "maximize"},
        "sampler": {"type": "grid"},
        "pruner": {"type": "median", "n_startup_trials": 1},
        "max_trials": 2,
        "max_parallel": 1,
    }
    async with every_service_as_its_own_user(tmp_path) as (server, asker):

        async def ask(verb: str, **body: object) -> SweepReply:
            subject = S.workflow_request(f"sweep-{verb}")
            msg = await asker.request(subject, json.dumps(body).encode(), timeout=30)
            return SweepReply.model_validate_json(msg.data)

        created = await ask("create", sweep=sweep)
        assert created.ok, created.errors

        async def ended():
            found = (await ask("get", name=created.sweep.sweep_id)).sweep
            return found if found.state != "running" else None

        done = await eventually(ended, 120, "the sweep ended")
    assert [t.state.value for t in done.trials] == ["complete", "pruned"]
    assert done.trials[0].value == 10.0
    assert violations(server) == []


async def test_a_trigger_on_an_alias_set_in_mlflow_fires_with_the_workflow_as_its_own_nats_user(tmp_path):
    """Its durable on the models stream, filtered to ``<prefix>.model.>``, reads MLflow's events as
    the registry publishes them (its own user): a trigger filtered on ``production`` fires once."""
    from trainyard_contracts.triggers import TriggerReply

    data = tmp_path / "data"
    trigger = {
        "name": "perm-on-production",
        "subject": S.model_event("*", "model_version_alias_created"),
        "filter": "alias == 'production'",
        "pipeline": PIPELINE,
    }
    with secured_server(tmp_path / "store") as server:
        await provisioned(server)
        api = submission_app(as_user(server.url, "submission", data), SubmissionSettings(token="t" * 24))
        workflow = workflow_app(as_user(server.url, "workflow", data), WorkflowSettings(reconcile_seconds=1))
        async with api.router.lifespan_context(api), running(workflow):
            asker = await as_submission(server)
            registry = await nats.connect(
                server.url,
                user="registry",
                password=password_for("registry"),
                inbox_prefix=inbox_of("registry"),
            )
            try:

                async def ask(verb: str, **body: object) -> TriggerReply:
                    msg = await asker.request(
                        S.workflow_request(f"trigger-{verb}"), json.dumps(body).encode(), timeout=30
                    )
                    return TriggerReply.model_validate_json(msg.data)

                assert (await ask("create", trigger=trigger)).status == 201
                for alias in ("staging", "production"):
                    event = {"name": "digits", "alias": alias, "version": 2, "by_trainyard": False}
                    subject = S.model_event("digits", "model_version_alias_created")
                    await registry.jetstream().publish(subject, json.dumps(event).encode())

                async def fired():
                    record = (await ask("get", name="perm-on-production")).trigger
                    return (
                        record if record is not None and record.fired == 1 and record.filtered == 1 else None
                    )

                await eventually(fired, 30, "the trigger fired on production, filtered staging")
            finally:
                await registry.drain()
                await asker.drain()
        assert violations(server) == []
