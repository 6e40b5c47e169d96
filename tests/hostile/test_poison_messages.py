"""A poison message on each service's consumer: parked on the dead-letter stream with its reason
after bounded redelivery, and the service keeps serving.

The services run in this process on a real nats-server (trainyard_shared.testing.helpers). The
scheduler's consumer is covered in tests/integration/test_job_path.py; here: executor, registry,
telemetry and the submission intake (which answers a bad spec with a rejection, not a dead letter).
"""

from __future__ import annotations

import json
import sys

import httpx
import pytest

from trainyard_contracts import JobSpec, JobSucceeded, StartAttempt, lifecycle, new_job_id
from trainyard_contracts._time import utcnow
from trainyard_executor.app import create_app as executor_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_registry.app import create_app as registry_app
from trainyard_registry.settings import RegistrySettings
from trainyard_scheduler.testkit import quick_scheduler
from trainyard_shared.testing.helpers import Bus, eventually, running
from trainyard_submission.app import create_app as submission_app
from trainyard_submission.settings import SubmissionSettings
from trainyard_telemetry.app import create_app as telemetry_app

pytestmark = [pytest.mark.service, pytest.mark.local]


async def dead_letters(bus: Bus, service: str, at_least: int) -> list:
    async def probe():
        msgs = await bus.messages(bus.subjects.dlq(service), bus.subjects.streams.dlq)
        return msgs if len(msgs) >= at_least else None

    return await eventually(probe, 30, f"{at_least} dead letters of {service}")


async def caught_up(bus: Bus, stream: str, durable: str, seq: int) -> None:
    """The consumer has acknowledged everything up to ``seq``: it went on past the poison."""

    async def probe():
        info = await bus.js.consumer_info(stream, durable)
        return info.ack_floor.stream_seq >= seq and info.num_ack_pending == 0

    await eventually(probe, 30, f"{durable} past stream seq {seq}")


async def test_executor_parks_a_poison_command_and_still_runs_jobs(common, bus):
    scheduler = quick_scheduler(common)
    settings = ExecutorSettings(id="exec-p", cpu=2, memory=2048, heartbeat_seconds=0.5, lease_seconds=3)
    executor = executor_app(common, settings)
    async with running(scheduler), running(executor):
        subject = bus.subjects.exec_command("exec-p", "start")
        await bus.js.publish(subject, b"\x00\xffnot json")
        await bus.js.publish(subject, json.dumps({"type": "start", "job_id": "j"}).encode())
        await bus.js.publish(subject, json.dumps({"type": "explode", "job_id": "j", "attempt": 1}).encode())
        letters = await dead_letters(bus, "executor", 3)
        job_id = await bus.submit(JobSpec(name="after-poison", command=[sys.executable, "-c", "print(1)"]))
        await bus.wait_state(job_id, "succeeded")
    assert all(m.headers["Trainyard-Reason"].startswith("invalid message") for m in letters)
    assert {m.headers["Trainyard-Original-Subject"] for m in letters} == {subject}


async def test_registry_parks_a_failing_event_after_bounded_redelivery(common, bus, tmp_path):
    registry = registry_app(common, RegistrySettings(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    async with running(registry):
        # a record that asks for a model, and a succeeded event whose outputs do not exist
        job_id = new_job_id()
        spec = JobSpec(name="poison", command=["true"], outputs={"model": "poisoned", "path": "out"})
        kv = await bus.js.key_value(bus.subjects.buckets.jobs)
        record = lifecycle.new_record(job_id, spec, utcnow(), "test")
        await kv.create(job_id, record.model_dump_json().encode())
        failing = JobSucceeded(job_id=job_id, outputs_uri=f"file://{tmp_path}/no/such/out")
        await bus.js.publish(failing.subject(bus.subjects), failing.model_dump_json().encode())
        junk = bus.subjects.job("junk", "succeeded")
        await bus.js.publish(junk, b'{"type": "succeeded"}')
        # a later event for a job without a model: handled and acked
        later = JobSucceeded(job_id=new_job_id(), outputs_uri="file:///tmp")
        ack = await bus.js.publish(later.subject(bus.subjects), later.model_dump_json().encode())
        letters = await dead_letters(bus, "registry", 2)
        await caught_up(bus, bus.subjects.streams.jobs, "registry-succeeded", ack.seq)
    by_subject = {m.headers["Trainyard-Original-Subject"]: m for m in letters}
    assert by_subject[junk].headers["Trainyard-Reason"].startswith("invalid message")
    parked = by_subject[failing.subject(bus.subjects)]
    # bounded: tried max_deliver (5) times, then parked with the last error, never redelivered forever
    reason = parked.headers["Trainyard-Reason"]
    assert reason.startswith("failed 5 times") and "FileNotFoundError" in reason, reason
    assert parked.headers["Trainyard-Deliveries"] == "5"


async def test_telemetry_parks_poison_events_and_keeps_counting(common, bus):
    telemetry = telemetry_app(common)
    async with running(telemetry):
        poison = [b"{", b'{"type": "queued", "job_id": ""}', b'{"type": "nonsense", "job_id": "x"}', b"[]"]
        poison.append(b"[" * 50_000)  # deep enough to make a recursive JSON decoder give up
        for body in poison:
            await bus.js.publish(bus.subjects.job("junk", "queued"), body)
        good = await bus.submit(JobSpec(name="counted", command=["true"]))
        letters = await dead_letters(bus, "telemetry", 5)
        info = await bus.js.stream_info(bus.subjects.streams.jobs)
        await caught_up(bus, bus.subjects.streams.jobs, "telemetry-events", info.state.last_seq)
    reasons = [m.headers["Trainyard-Reason"] for m in letters]
    assert good and all(r.startswith(("invalid message", "failed 5 times")) for r in reasons), reasons


async def test_submission_intake_rejects_garbage_and_keeps_serving(common, bus):
    app = submission_app(common, SubmissionSettings(token="admin-token"))
    async with app.router.lifespan_context(app):
        inbox = bus.nc.new_inbox()
        replies = await bus.nc.subscribe(inbox)
        for i, body in enumerate([b"\x00\xff" * 100, b"{", b"[1,2]", b"name: x\ncommand: 'rm -rf /'\n", b""]):
            await bus.js.publish(
                bus.subjects.intake_submit,
                body,
                headers={"Nats-Msg-Id": f"poison-{i}", "Trainyard-Reply-To": inbox},
            )
            reply = json.loads((await replies.next_msg(timeout=10)).data)
            assert reply["accepted"] is False and reply["errors"], reply
            assert all(e["field"] and e["message"] for e in reply["errors"])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            resp = await client.post(
                "/v1/jobs",
                json={"name": "fine", "command": ["true"]},
                headers={"Authorization": "Bearer admin-token"},
            )
            assert resp.status_code == 201
    # nothing from the intake was dead-lettered: every bad spec became a rejection
    assert await bus.messages(bus.subjects.dlq("submission"), bus.subjects.streams.dlq) == []


def test_start_attempt_shape_is_what_the_executor_parses():
    """Guards the poison test above: a well-formed command does parse (so junk is junk)."""
    cmd = StartAttempt(job_id="j", attempt=1, executor_id="e", spec=JobSpec(name="a", command=["true"]))
    assert StartAttempt.model_validate_json(cmd.model_dump_json()) == cmd
