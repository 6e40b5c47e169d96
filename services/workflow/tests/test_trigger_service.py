"""Triggers on a real nats-server: a plain nats-py publisher's events start the trigger's
pipeline through the workflow service (two replicas, one restarted), with the real submission
service answering the intake in this process (the jobs stay queued: nothing here runs them)."""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta

import nats
import pytest

from trainyard_contracts._time import utcnow
from trainyard_contracts.runs import PipelineReply, PipelineRun
from trainyard_contracts.triggers import TriggerRecord, TriggerReply
from trainyard_shared.testing.helpers import Bus, common_settings, eventually, running
from trainyard_submission.app import create_app as submission_app
from trainyard_submission.settings import SubmissionSettings
from trainyard_workflow.app import create_app as workflow_app
from trainyard_workflow.settings import WorkflowSettings

pytestmark = [pytest.mark.service, pytest.mark.workflow]

NAME = "retrain-digits"
PIPELINE = {
    "name": "retrain",
    "params": {"version": "none", "rows": 0},
    "steps": [
        {
            "name": "train",
            "job": {"name": "train", "command": ["echo", "data ${{ params.version }}"], "priority": 0},
        }
    ],
}


class SimulatedClock:
    """Starts at the wall clock (events' stream timestamps are compared with a trigger's creation)."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self):
        return self.now


class Stack:
    def __init__(self, server, prefix, tmp_path, foreign):
        self.server, self.prefix, self.tmp_path, self.foreign = server, prefix, tmp_path, foreign
        self.clock = SimulatedClock()

    def common(self, name):
        common = common_settings(self.server.url, self.prefix, self.tmp_path / name)
        return common.model_copy(update={"trigger_subjects": self.foreign})

    @contextlib.asynccontextmanager
    async def intake(self):
        api = submission_app(self.common("api"), SubmissionSettings())
        async with api.router.lifespan_context(api):
            yield

    @contextlib.asynccontextmanager
    async def replica(self, name="a"):
        settings = WorkflowSettings(
            reconcile_seconds=1, schedule_tick_seconds=0.05, schedule_lease_seconds=2, replica_id=name
        )
        async with running(workflow_app(self.common(name), settings, self.clock)) as app:
            yield app


async def ask(bus, kind: str, **body) -> TriggerReply:
    msg = await bus.nc.request(
        f"{bus.subjects.prefix}.workflow.{kind}", json.dumps(body).encode(), timeout=30
    )
    return TriggerReply.model_validate_json(msg.data)


async def create(bus, **fields) -> TriggerRecord:
    reply = await ask(
        bus, "trigger-create", trigger={"name": NAME, "pipeline": PIPELINE, **fields}, by="team-a"
    )
    assert reply.status == 201 and reply.trigger is not None, reply.errors
    return reply.trigger


async def counted(bus, what: str, **at_least: int) -> TriggerRecord:
    """The trigger once each counter is at least as given and nothing is pending."""

    async def probe():
        record = (await ask(bus, "trigger-get", name=NAME)).trigger
        done = record is not None and not record.pending
        return record if done and all(getattr(record, k) >= v for k, v in at_least.items()) else None

    return await eventually(probe, 30, what)


async def trigger_runs(bus) -> list[PipelineRun]:
    msg = await bus.nc.request(f"{bus.subjects.prefix}.workflow.list", b'{"limit": 1000}', timeout=30)
    runs = PipelineReply.model_validate_json(msg.data).runs or []
    return [r for r in runs if r.submitted_by == f"trigger:{NAME}"]


async def publish(nc, subject: str, body) -> None:
    """A plain core-NATS publish, as another system does: no JetStream, no headers."""
    await nc.publish(subject, body if isinstance(body, bytes) else json.dumps(body).encode())
    await nc.flush()


async def test_a_plain_publisher_starts_the_pipeline_with_the_events_parameters_once_the_filter_agrees(
    fresh_nats_server, prefix, tmp_path
):
    stack = Stack(fresh_nats_server, prefix, tmp_path, ["datasets.>"])
    publisher = await nats.connect(fresh_nats_server.url)
    async with Bus(fresh_nats_server.url, prefix) as bus, stack.intake(), stack.replica():
        # stored before the trigger exists (acked by the stream): never fires it
        earlier = {"kind": "full", "version": "v5", "rows": 999}
        await bus.js.publish("datasets.digits.published", json.dumps(earlier).encode())
        await create(
            bus,
            subject="datasets.digits.published",
            filter="kind == 'full' && rows > `100`",
            params={"version": "version", "rows": "rows"},
        )
        await publish(
            publisher, "datasets.digits.published", {"kind": "partial", "version": "v6", "rows": 500}
        )
        await publish(publisher, "datasets.digits.published", {"kind": "full", "version": "v7", "rows": 1797})
        await publish(publisher, "datasets.other.published", {"kind": "full", "version": "v9", "rows": 1797})
        record = await counted(bus, "the event fired", fired=1, filtered=1)
        runs = await trigger_runs(bus)
    await publisher.close()
    assert [r.run_id for r in runs] == [record.last_run_id]
    (run,) = runs
    assert run.spec.params == {"version": "v7", "rows": 1797}
    assert run.spec.steps[0].job.command == ["echo", "data v7"]
    # the three events on its subject looked at (the first as published before the trigger); the
    # other subject's is no business of this trigger
    assert record.seen[f"{prefix.upper().replace('-', '_')}_TRIGGERS"] == 3
    assert record.fired == 1 and record.filtered == 1


async def test_the_same_dedupe_value_twice_starts_one_run(nats_server, prefix, tmp_path):
    subject = f"ext-{prefix}.digits.published"
    stack = Stack(nats_server, prefix, tmp_path, [f"ext-{prefix}.>"])
    async with Bus(nats_server.url, prefix) as bus, stack.intake(), stack.replica():
        await create(bus, subject=subject, params={"version": "version"}, dedupe_key="version")
        for version in ("v1", "v1", "v2", "v1"):
            await publish(bus.nc, subject, {"version": version})
        record = await counted(bus, "four events looked at", fired=2, deduplicated=2)
        runs = await trigger_runs(bus)
    assert sorted(r.spec.params["version"] for r in runs) == ["v1", "v2"]
    assert record.fired == 2 and record.deduplicated == 2


async def test_a_burst_within_the_debounce_window_fires_once_with_the_last_events_parameters(
    nats_server, prefix, tmp_path
):
    subject = f"ext-{prefix}.digits.published"
    stack = Stack(nats_server, prefix, tmp_path, [f"ext-{prefix}.>"])
    async with Bus(nats_server.url, prefix) as bus, stack.intake(), stack.replica():
        await create(bus, subject=subject, params={"version": "version"}, debounce_seconds=600)
        for n in range(5):
            await publish(bus.nc, subject, {"version": f"v{n}"})

        async def folded():
            record = (await ask(bus, "trigger-get", name=NAME)).trigger
            return record if record is not None and record.debounced == 4 else None

        waiting = await folded_within(folded)
        assert waiting.fired == 0 and len(waiting.pending) == 1 and waiting.pending[0].events == 5
        stack.clock.now += timedelta(seconds=601)  # the window closes
        record = await counted(bus, "the window fired", fired=1)
        runs = await trigger_runs(bus)
    assert [r.spec.params["version"] for r in runs] == ["v4"]
    assert record.fired == 1 and record.debounced == 4


async def folded_within(probe):
    return await eventually(probe, 30, "the burst folded into one window")


async def test_each_event_fires_once_across_a_restart_and_two_replicas(nats_server, prefix, tmp_path):
    subject = f"ext-{prefix}.digits.published"
    stack = Stack(nats_server, prefix, tmp_path, [f"ext-{prefix}.>"])
    async with Bus(nats_server.url, prefix) as bus, stack.intake():
        async with stack.replica("a"):
            await create(bus, subject=subject, params={"version": "version"})
            await publish(bus.nc, subject, {"version": "v1"})
            await counted(bus, "v1 fired", fired=1)
        await publish(bus.nc, subject, {"version": "v2"})  # while no replica runs
        async with stack.replica("a"), stack.replica("b"):
            for n in (3, 4):
                await publish(bus.nc, subject, {"version": f"v{n}"})
            record = await counted(bus, "every event fired", fired=4)
            runs = await trigger_runs(bus)
    assert sorted(r.spec.params["version"] for r in runs) == ["v1", "v2", "v3", "v4"]
    assert record.fired == 4
    for run in runs:  # each run submitted its one step once
        assert [len(step.jobs) for step in run.steps.values()] == [1]


async def test_a_fire_a_crash_left_pending_starts_its_run_once(nats_server, prefix, tmp_path):
    """The crash windows of a fire: stored as pending with its run already created, and stored
    as pending without its run. A restart starts the second and keeps the first as it is."""
    subject = f"ext-{prefix}.digits.published"
    stack = Stack(nats_server, prefix, tmp_path, [f"ext-{prefix}.>"])
    async with Bus(nats_server.url, prefix) as bus, stack.intake():
        async with stack.replica("a"):
            created = await create(bus, subject=subject)
        from trainyard_contracts.triggers import PendingFire
        from trainyard_contracts.workflow import validate_pipeline
        from trainyard_workflow.trigger_core import trigger_run_id

        fires = [
            PendingFire(
                run_id=trigger_run_id(NAME, created.created, f"event:S:{n}"),
                params={"version": f"v{n}"},
                due=stack.clock.now,
                stream="S",
                seq=n,
            )
            for n in (1, 2)
        ]
        triggers = await bus.js.key_value(bus.subjects.buckets.triggers)
        entry = await triggers.get(NAME)
        crashed = created.model_copy(update={"pending": fires})
        await triggers.update(NAME, crashed.model_dump_json().encode(), last=entry.revision)
        pipelines = await bus.js.key_value(bus.subjects.buckets.pipelines)
        before = PipelineRun.start(
            fires[0].run_id, validate_pipeline(PIPELINE, {"version": "v1"}), f"trigger:{NAME}"
        )
        await pipelines.create(before.run_id, before.model_dump_json().encode())
        async with stack.replica("a"):
            record = await counted(bus, "the pending fires done", fired=2)
            runs = {r.run_id: r for r in await trigger_runs(bus)}
    assert sorted(runs) == sorted(f.run_id for f in fires)
    assert runs[before.run_id].created == before.created  # the run that existed, not a new one
    assert record.fired == 2


async def test_a_trigger_outside_the_allow_list_is_refused_with_a_field_error(nats_server, prefix, tmp_path):
    stack = Stack(nats_server, prefix, tmp_path, [f"ext-{prefix}.>"])
    async with Bus(nats_server.url, prefix) as bus, stack.intake(), stack.replica():
        for subject in (
            f"{prefix}.job.*.succeeded",  # the bus's own job events
            "$JS.API.>",
            "_INBOX.>",
            "elsewhere.digits.published",
            ">",
        ):
            reply = await ask(
                bus, "trigger-create", trigger={"name": NAME, "subject": subject, "pipeline": PIPELINE}
            )
            assert reply.status == 422 and [e.field for e in reply.errors] == ["subject"], subject
        allowed = (
            f"ext-{prefix}.digits.*",
            f"{prefix}.model.digits.registered",
            f"{prefix}.trigger.x",
            f"{prefix}.model.*.model_version_alias_created",  # MLflow's events, told by its webhooks
        )
        for n, subject in enumerate(allowed):
            reply = await ask(
                bus, "trigger-create", trigger={"name": f"ok-{n}", "subject": subject, "pipeline": PIPELINE}
            )
            assert reply.status == 201, (subject, reply.errors)
        bad_filter = await ask(
            bus,
            "trigger-create",
            trigger={"name": "bad", "subject": allowed[0], "filter": "kind ==", "pipeline": PIPELINE},
        )
        assert bad_filter.status == 422 and bad_filter.errors[0].field == "filter"
        listed = await ask(bus, "trigger-list")
        assert sorted(t.spec.name for t in listed.triggers or []) == ["ok-0", "ok-1", "ok-2", "ok-3"]
        assert (await ask(bus, "trigger-delete", name="ok-0")).ok
        assert (await ask(bus, "trigger-get", name="ok-0")).status == 404


async def test_bad_events_are_counted_and_do_not_stop_the_consumer(nats_server, prefix, tmp_path):
    subject = f"ext-{prefix}.digits.published"
    stack = Stack(nats_server, prefix, tmp_path, [f"ext-{prefix}.>"])
    async with Bus(nats_server.url, prefix) as bus, stack.intake(), stack.replica():
        await create(bus, subject=subject, params={"version": "version", "rows": "rows"})
        await publish(bus.nc, subject, b"not json {")
        await publish(bus.nc, subject, b"\xff\xfe")
        await publish(bus.nc, subject, json.dumps({"version": "x" * 70_000}).encode())  # over 64 KiB
        await publish(bus.nc, subject, {"version": "v1", "rows": [1, 2]})  # rows: not a parameter value
        await publish(bus.nc, subject, {"version": "v2", "rows": 10})
        record = await counted(bus, "the good event fired after the bad ones", fired=1)
        runs = await trigger_runs(bus)
    assert record.bad_events == 3 and record.invalid == 1 and record.fired == 1
    assert [r.spec.params for r in runs] == [{"version": "v2", "rows": 10}]
