"""A half-done transition is finished, not left: the executor's write moved the record to running,
announcing it failed (the jobs stream had no leader), and the start command came again. That
redelivered command used to see ``running`` and return, so the job stayed ``running`` for good
with no process (300 jobs in a broker-node-loss run). Now the executor that made the write, and
has not launched the attempt, announces it (same message id) and launches it. A real executor
(local backend) on a real nats-server; the jobs stream is removed for a moment and put back."""

from __future__ import annotations

import pytest

from trainyard_contracts import JobSpec, JobState, StartAttempt, lifecycle, msg_id, new_job_id
from trainyard_contracts._time import utcnow
from trainyard_executor.app import create_app as executor_app
from trainyard_executor.settings import ExecutorSettings

from .harness import eventually, running

pytestmark = [pytest.mark.service, pytest.mark.local]


async def test_a_start_whose_running_event_failed_is_finished_when_the_command_comes_again(common, bus):
    settings = ExecutorSettings(
        id="exec-half",
        cpu=2,
        memory=4096,
        gpu=0,
        heartbeat_seconds=0.5,
        lease_seconds=5,
        broker_outage_seconds=0.5,  # give up on the event quickly: the command comes again
    )
    async with running(executor_app(common, settings)):
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
        await bus.wait_state(record.job_id, "running")  # the write landed; its event could not

        async def delivered_again():
            info = await bus.js.consumer_info(exec_stream, "executor-exec-half")
            return info.delivered.consumer_seq >= 2  # the only message on it, delivered twice

        await eventually(delivered_again, 30, "the start command delivered again")
        await bus.js.add_stream(config)
        done = await bus.wait_state(record.job_id, "succeeded", "failed", timeout=60)
        events = await bus.event_types(record.job_id)
    assert done.state == JobState.SUCCEEDED and done.attempt == 1, (done.state, done.reason)
    assert events == ["running", "succeeded"]
