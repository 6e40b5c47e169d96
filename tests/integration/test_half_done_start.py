"""A half-done transition is finished, not left: a start written while its event could not be
published (the jobs stream had no leader) is announced once the stream is back, before the job's
end, and the job runs once. (When the executor wrote its own start, the redelivered command used
to see ``running`` and return, so the job stayed ``running`` for good with no process: 300 jobs
in a broker-node-loss run.) Now the scheduler writes what the executor reports: it keeps
announcing the start while the stream is away, and the job's next report (its end) waits behind it,
so the events keep their order. A real scheduler and executor (local backend) on a real
nats-server; the jobs stream is removed for a moment and put back."""

from __future__ import annotations

import pytest

from trainyard_contracts import JobSpec, JobState, StartAttempt, lifecycle, msg_id, new_job_id
from trainyard_contracts._time import utcnow
from trainyard_executor.app import create_app as executor_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_scheduler.app import create_app as scheduler_app
from trainyard_scheduler.settings import SchedulerSettings

from .harness import eventually, running

pytestmark = [pytest.mark.service, pytest.mark.local]


async def test_a_start_whose_running_event_failed_is_announced_in_order_when_the_stream_is_back(common, bus):
    settings = ExecutorSettings(
        id="exec-half", cpu=2, memory=4096, gpu=0, heartbeat_seconds=0.5, lease_seconds=5
    )
    async with (
        running(scheduler_app(common, SchedulerSettings(tick_seconds=0.2))),
        running(executor_app(common, settings)),
    ):
        subjects = bus.subjects
        jobs_stream, exec_stream = subjects.streams.jobs, subjects.streams.exec
        config = (await bus.js.stream_info(jobs_stream)).config
        now = utcnow()
        queued = lifecycle.advance(
            lifecycle.new_record(new_job_id(), JobSpec(name="half", command=["true"]), now, "t"),
            JobState.QUEUED,
            now,
        )
        record = lifecycle.schedule(queued, "exec-half", now)  # as the scheduler writes it
        kv = await bus.js.key_value(subjects.buckets.jobs)
        await kv.create(record.job_id, record.model_dump_json().encode())
        await bus.js.delete_stream(jobs_stream)
        start = StartAttempt(job_id=record.job_id, attempt=1, executor_id="exec-half", spec=record.spec)
        await bus.js.publish(
            subjects.exec_command("exec-half", "start"),
            start.model_dump_json().encode(),
            headers={"Nats-Msg-Id": msg_id(record.job_id, 1, "start@exec-half")},
            stream=exec_stream,
        )
        # the start is written (its event could not be) and the attempt runs and ends
        await bus.wait_state(record.job_id, "running", "succeeded", timeout=60)

        async def end_reported() -> bool:  # the end waits behind the start's announcement
            info = await bus.js.stream_info(subjects.streams.reports)
            return bool(info.state.messages >= 2)

        await eventually(end_reported, 60, "the attempt's end reported")
        await bus.js.add_stream(config)
        done = await bus.wait_state(record.job_id, "succeeded", "failed", timeout=60)

        async def announced() -> list[str] | None:
            events = await bus.event_types(record.job_id)
            return events if len(events) >= 2 else None

        events = await eventually(announced, 60, "the job's events announced")
    assert done.state == JobState.SUCCEEDED and done.attempt == 1, (done.state, done.reason)
    assert events == ["running", "succeeded"]
