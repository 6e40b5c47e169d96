"""A job's events start with one submitted event, whoever publishes it first.

The scheduler plans from the jobs bucket, so it can see a new record before the submission
service has published the job's submitted event (the record is written first). It therefore
publishes the same event itself, rebuilt from the record, just before the queued one; the jobs
stream keeps one copy by message id. Real nats-server, real scheduler service, no executor (the
jobs stay queued)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from trainyard_contracts import JobSpec, JobSubmitted, lifecycle
from trainyard_contracts._time import utcnow
from trainyard_contracts.ids import new_job_id
from trainyard_scheduler.testkit import quick_scheduler

from .harness import Bus, running

pytestmark = [pytest.mark.service]


SPEC = JobSpec(name="order", command=["true"], env={"TOKEN": "s3cret", "MODE": "fast"}, secret_env=["TOKEN"])


async def write_record(bus: Bus, *, age: timedelta = timedelta(0)) -> str:
    """What the submission service writes first; its submitted event is left to the test."""
    job_id = new_job_id()
    record = lifecycle.new_record(job_id, SPEC, utcnow() - age, "alice")
    kv = await bus.js.key_value(bus.subjects.buckets.jobs)
    await kv.create(job_id, record.model_dump_json().encode())
    return job_id


async def job_events(bus: Bus, job_id: str) -> list[dict]:
    msgs = await bus.messages(bus.subjects.job_events(job_id), bus.subjects.streams.jobs)
    return [json.loads(m.data) for m in msgs]


async def publish_submitted(bus: Bus, job_id: str, *, with_msg_id: bool = True) -> None:
    event = JobSubmitted(job_id=job_id, spec=SPEC.redacted(), submitted_by="alice")
    headers = {"Nats-Msg-Id": event.msg_id()} if with_msg_id else {}
    await bus.js.publish(event.subject(bus.subjects), event.model_dump_json().encode(), headers=headers)


async def test_a_job_whose_submitted_event_never_came_still_starts_with_one(common, bus):
    async with running(quick_scheduler(common)):
        job_id = await write_record(bus)
        await bus.wait_state(job_id, "queued")
    events = await job_events(bus, job_id)
    assert [e["type"] for e in events] == ["submitted", "queued"]
    submitted = events[0]
    assert submitted["submitted_by"] == "alice"
    # rebuilt from the record, the secret masked as the submission service masks it
    assert submitted["spec"]["env"] == {"TOKEN": "***", "MODE": "fast"}
    assert "s3cret" not in json.dumps(events)


async def test_a_late_submitted_event_is_dropped_as_the_copy_the_scheduler_published(common, bus):
    async with running(quick_scheduler(common)):
        job_id = await write_record(bus)
        await bus.wait_state(job_id, "queued")
        await publish_submitted(bus, job_id)  # the submission service, slower than the planner
    assert [e["type"] for e in await job_events(bus, job_id)] == ["submitted", "queued"]


async def test_an_old_record_is_checked_against_the_stream_before_a_copy_is_published(common, bus):
    """Past the duplicate window the stream would keep a second copy, so for a record older than
    the scheduler's bound the stream is read first. The test's event goes without a message id,
    so only that read (not the stream's deduplication) can keep the copy out."""
    async with running(quick_scheduler(common)):
        pass  # the streams and buckets exist from here
    job_id = await write_record(bus, age=timedelta(minutes=5))
    await publish_submitted(bus, job_id, with_msg_id=False)
    async with running(quick_scheduler(common)):
        await bus.wait_state(job_id, "queued")
    assert [e["type"] for e in await job_events(bus, job_id)] == ["submitted", "queued"]
