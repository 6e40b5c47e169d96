"""Schedules on a real nats-server: the workflow service (two replicas, one restarted) with a
simulated clock, and the real submission service answering the intake in this process. Each tick
starts one pipeline run, whatever restarts or replicas."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from trainyard_contracts.runs import PipelineReply, PipelineRun
from trainyard_contracts.schedules import ScheduleRecord, ScheduleReply
from trainyard_contracts.workflow import validate_pipeline
from trainyard_shared.testing.helpers import common_settings, eventually, running
from trainyard_submission.app import create_app as submission_app
from trainyard_submission.settings import SubmissionSettings
from trainyard_workflow.app import create_app as workflow_app
from trainyard_workflow.schedule_core import tick_run_id
from trainyard_workflow.settings import WorkflowSettings

pytestmark = [pytest.mark.service, pytest.mark.workflow]

START = datetime(2026, 6, 1, 10, 0, 30, tzinfo=UTC)
NAME = "every-minute"
PIPELINE = {"name": "tiny", "steps": [{"name": "only", "job": {"name": "only", "command": ["true"]}}]}
SCHEDULE = {
    "name": NAME,
    "cron": "* * * * *",
    "timezone": "Europe/Berlin",
    "starting_deadline_seconds": 600,
    "pipeline": PIPELINE,
}


class SimulatedClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@contextlib.asynccontextmanager
async def intake(nats_server, prefix, tmp_path):
    """The submission service: it answers the workflow's submissions (jobs stay queued)."""
    api = submission_app(common_settings(nats_server.url, prefix, tmp_path / "api"), SubmissionSettings())
    async with api.router.lifespan_context(api):
        yield


@contextlib.asynccontextmanager
async def replica(nats_server, prefix, tmp_path, clock, name):
    settings = WorkflowSettings(
        reconcile_seconds=1, schedule_tick_seconds=0.05, schedule_lease_seconds=2, replica_id=name
    )
    app = workflow_app(common_settings(nats_server.url, prefix, tmp_path / name), settings, clock)
    async with running(app):
        yield app


async def ask(bus, kind: str, **body) -> ScheduleReply:
    msg = await bus.nc.request(
        f"{bus.subjects.prefix}.workflow.{kind}", json.dumps(body).encode(), timeout=30
    )
    return ScheduleReply.model_validate_json(msg.data)


async def schedule_runs(bus) -> list[PipelineRun]:
    msg = await bus.nc.request(f"{bus.subjects.prefix}.workflow.list", b'{"limit": 1000}', timeout=30)
    runs = PipelineReply.model_validate_json(msg.data).runs or []
    return [r for r in runs if r.submitted_by == f"schedule:{NAME}"]


async def fired(bus, count: int) -> ScheduleRecord:
    async def probe():
        record = (await ask(bus, "schedule-get", name=NAME)).schedule
        return record if record is not None and record.fired >= count and not record.pending else None

    return await eventually(probe, 30, f"{count} ticks fired")


async def test_a_minutely_schedule_over_three_minutes_starts_three_runs_across_a_restart_and_two_replicas(
    nats_server, prefix, tmp_path, bus
):
    clock = SimulatedClock(START)
    async with intake(nats_server, prefix, tmp_path), replica(nats_server, prefix, tmp_path, clock, "b"):
        async with replica(nats_server, prefix, tmp_path, clock, "a"):
            created = await ask(bus, "schedule-create", schedule=SCHEDULE, by="tester")
            assert created.status == 201 and created.schedule is not None
            for minute in (1, 2):
                clock.now = START + timedelta(minutes=minute, seconds=10)
                await fired(bus, minute)
        # replica a stopped (its lease released); b goes on, and a comes back
        async with replica(nats_server, prefix, tmp_path, clock, "a"):
            clock.now = START + timedelta(minutes=3, seconds=10)
            record = await fired(bus, 3)
            runs = await schedule_runs(bus)
    ticks = [START.replace(second=0) + timedelta(minutes=m) for m in (1, 2, 3)]
    assert sorted(r.run_id for r in runs) == [tick_run_id(NAME, t) for t in ticks]
    assert record.fired == 3 and record.missed == 0 and record.last_tick == ticks[-1]
    for run in runs:  # each run submitted its one step once
        assert [len(step.jobs) for step in run.steps.values()] == [1]


async def test_ticks_a_crash_left_pending_start_once_the_run_already_created_is_not_doubled(
    nats_server, prefix, tmp_path, bus
):
    """The two crash windows of a tick: after it was stored as pending (its run not created), and
    after its run was created (the tick still pending). A restart starts the first once and keeps
    the second as it is."""
    clock = SimulatedClock(START)
    async with intake(nats_server, prefix, tmp_path):
        async with replica(nats_server, prefix, tmp_path, clock, "a"):
            assert (await ask(bus, "schedule-create", schedule=SCHEDULE)).status == 201
        created_run, lost_run = (
            START.replace(second=0) + timedelta(minutes=1),
            START.replace(second=0) + timedelta(minutes=2),
        )
        schedules = await bus.js.key_value(bus.subjects.buckets.schedules)
        entry = await schedules.get(NAME)
        record = ScheduleRecord.model_validate_json(entry.value)
        crashed = record.model_copy(update={"pending": [created_run, lost_run], "last_tick": lost_run})
        await schedules.update(NAME, crashed.model_dump_json().encode(), last=entry.revision)
        pipelines = await bus.js.key_value(bus.subjects.buckets.pipelines)
        before = PipelineRun.start(
            tick_run_id(NAME, created_run), validate_pipeline(PIPELINE), f"schedule:{NAME}"
        )
        await pipelines.create(before.run_id, before.model_dump_json().encode())

        clock.now = lost_run + timedelta(seconds=10)  # nothing newer is due
        async with replica(nats_server, prefix, tmp_path, clock, "a"):
            record = await fired(bus, 2)
            runs = {r.run_id: r for r in await schedule_runs(bus)}
    assert sorted(runs) == [tick_run_id(NAME, created_run), tick_run_id(NAME, lost_run)]
    assert runs[before.run_id].created == before.created  # the run that existed, not a new one
    assert record.fired == 2 and record.pending == []


async def test_bad_schedules_are_answered_with_the_field_and_the_service_keeps_answering(
    nats_server, prefix, tmp_path, bus
):
    clock = SimulatedClock(START)
    async with intake(nats_server, prefix, tmp_path), replica(nats_server, prefix, tmp_path, clock, "a"):
        bad_cron = await ask(bus, "schedule-create", schedule={**SCHEDULE, "cron": "61 * * * *"})
        assert bad_cron.status == 422 and bad_cron.errors[0].field == "cron"
        bad_zone = await ask(bus, "schedule-create", schedule={**SCHEDULE, "timezone": "Mars/Olympus"})
        assert bad_zone.status == 422 and bad_zone.errors[0].field == "timezone"
        bad_step = {**SCHEDULE, "pipeline": {"name": "p", "steps": [{"name": "s", "job": {"name": "s"}}]}}
        assert (
            (await ask(bus, "schedule-create", schedule=bad_step))
            .errors[0]
            .field.startswith("pipeline.steps.0")
        )
        assert (await ask(bus, "schedule-get", name="nope")).status == 404
        assert (await ask(bus, "schedule-suspend")).status == 422
        assert (await ask(bus, "schedule-create", schedule=SCHEDULE)).status == 201
        assert (await ask(bus, "schedule-create", schedule=SCHEDULE)).status == 409
        suspended = await ask(bus, "schedule-suspend", name=NAME)
        assert suspended.schedule is not None and suspended.schedule.spec.suspended
        listed = await ask(bus, "schedule-list")
        assert [s.spec.name for s in listed.schedules or []] == [NAME]
        assert (await ask(bus, "schedule-delete", name=NAME)).ok
        assert (await ask(bus, "schedule-get", name=NAME)).status == 404


async def test_backfill_starts_the_missed_ticks_once_and_leaves_fired_ones_alone(
    nats_server, prefix, tmp_path, bus
):
    clock = SimulatedClock(START)
    async with intake(nats_server, prefix, tmp_path), replica(nats_server, prefix, tmp_path, clock, "a"):
        assert (await ask(bus, "schedule-create", schedule={**SCHEDULE, "suspended": True})).status == 201
        clock.now = START + timedelta(minutes=3)  # suspended: 10:01 .. 10:03 do not fire
        await eventually(lambda: _last_tick_reached(bus, clock.now.replace(second=0)), 30, "ticks dropped")
        start, end = (
            START.replace(second=0) + timedelta(minutes=1),
            START.replace(second=0) + timedelta(minutes=2),
        )
        body = {"name": NAME, "start": start.isoformat(), "end": end.isoformat()}
        first = await ask(bus, "schedule-backfill", **body)
        again = await ask(bus, "schedule-backfill", **body)
        runs = await schedule_runs(bus)
    assert first.run_ids == again.run_ids == [tick_run_id(NAME, start), tick_run_id(NAME, end)]
    assert sorted(r.run_id for r in runs) == first.run_ids
    assert again.schedule is not None and again.schedule.fired == 2  # the repeat started nothing


async def _last_tick_reached(bus, tick: datetime) -> bool:
    record = (await ask(bus, "schedule-get", name=NAME)).schedule
    return record is not None and record.last_tick >= tick


async def test_schedules_over_http_need_a_token_and_go_through_the_workflow_service(
    nats_server, prefix, tmp_path, bus
):
    """The submission API (over ASGI) asks the workflow service over NATS request-reply."""
    import httpx

    clock = SimulatedClock(START)
    api = submission_app(
        common_settings(nats_server.url, prefix, tmp_path / "api"), SubmissionSettings(token="sched-admin-1")
    )
    auth = {"Authorization": "Bearer sched-admin-1"}
    async with api.router.lifespan_context(api), replica(nats_server, prefix, tmp_path, clock, "a"):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            assert (await http.get("/v1/schedules")).status_code == 401
            bad = await http.post("/v1/schedules", json={**SCHEDULE, "cron": "0 3 * *"}, headers=auth)
            assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "cron"
            made = await http.post("/v1/schedules", json=SCHEDULE, headers=auth)
            assert made.status_code == 201 and made.json()["spec"]["name"] == NAME
            suspended = await http.post(f"/v1/schedules/{NAME}/suspend", headers=auth)
            assert suspended.json()["spec"]["suspended"] is True
            resumed = await http.post(f"/v1/schedules/{NAME}/resume", headers=auth)
            assert resumed.json()["spec"]["suspended"] is False
            window = {"from": "2026-06-01T11:58:00+02:00", "to": "2026-06-01T11:59:00+02:00"}
            filled = await http.post(f"/v1/schedules/{NAME}/backfill", json=window, headers=auth)
            assert filled.status_code == 200 and len(filled.json()["run_ids"]) == 2
            assert (
                await http.post(f"/v1/schedules/{NAME}/backfill", json={}, headers=auth)
            ).status_code == 422
            listed = await http.get("/v1/schedules", headers=auth)
            assert [s["spec"]["name"] for s in listed.json()["schedules"]] == [NAME]
            assert (await http.delete(f"/v1/schedules/{NAME}", headers=auth)).status_code == 200
            assert (await http.get(f"/v1/schedules/{NAME}", headers=auth)).status_code == 404
            assert (await http.get("/v1/schedules/..bad..", headers=auth)).status_code == 404
