"""An attempt's end written but never announced is announced after a restart: a ``kill -9`` of the
executor between its terminal compare-and-set and the event left the record ``succeeded`` and the
jobs stream without a terminal event, so nothing downstream (registry, workflow, followers) ever
heard of it (found by the chaos run: "succeeded in its record, but no terminal event"). A real
executor (local backend) on a real nats-server starts over such records: the unsaid one is
announced with the event's own message id; one already announced is not announced again; one
that ended elsewhere is not this executor's to announce."""

from __future__ import annotations

import pytest

from trainyard_contracts import JobSpec, JobState, lifecycle, new_job_id
from trainyard_contracts._time import utcnow
from trainyard_contracts.events import JobSucceeded
from trainyard_executor.app import create_app as executor_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_shared.provision import provision

from .harness import eventually, running

pytestmark = [pytest.mark.service, pytest.mark.local]


def ended_on(executor: str, name: str):
    now = utcnow()
    record = lifecycle.new_record(new_job_id(), JobSpec(name=name, command=["true"]), now, "t")
    record = lifecycle.advance(record, JobState.QUEUED, now)
    record = lifecycle.start(lifecycle.schedule(record, executor, now), now)
    return lifecycle.finish(record, JobState.SUCCEEDED, now, exit_code=0, reason="exit code 0")


async def test_an_end_a_restart_left_unsaid_is_announced_once_by_the_executor_it_ended_on(common, bus):
    unsaid, said, elsewhere = (
        ended_on("exec-end", "unsaid"),
        ended_on("exec-end", "said"),
        ended_on("other", "x"),
    )
    await provision(bus.js, bus.subjects)  # as the stack's provision step does before any service
    kv = await bus.js.key_value(bus.subjects.buckets.jobs)
    for record in (unsaid, said, elsewhere):
        await kv.create(record.job_id, record.model_dump_json().encode())
    event = JobSucceeded(job_id=said.job_id, attempt=1, executor_id="exec-end", exit_code=0)
    await bus.js.publish(
        event.subject(bus.subjects),
        event.model_dump_json().encode(),
        headers={"Nats-Msg-Id": event.msg_id()},
        stream=bus.subjects.streams.jobs,
    )
    settings = ExecutorSettings(id="exec-end", cpu=1, memory=1024, gpu=0, heartbeat_seconds=0.5)
    async with running(executor_app(common, settings)) as app:
        core = app.context.get("executor").runtime.core

        async def announced() -> bool:
            return core.recovered.is_set() and await bus.event_types(unsaid.job_id) == ["succeeded"]

        await eventually(announced, 30, "the unsaid end announced")
        assert await bus.event_types(said.job_id) == ["succeeded"]  # not a second time
        assert await bus.event_types(elsewhere.job_id) == []  # another executor's to say
