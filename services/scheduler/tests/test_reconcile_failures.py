"""One job's failure to be announced is its own: the reconciler goes on with the other records,
and a change whose events or commands could not be published is announced again promptly,
not at the reconciler's next re-send. Against a real nats-server."""

from __future__ import annotations

import json

import nats.js.errors
import pytest

from trainyard_contracts import (
    Capacity,
    ExecutorHeartbeat,
    JobSpec,
    JobState,
    StartAttempt,
    lifecycle,
    new_job_id,
)
from trainyard_contracts._time import utcnow
from trainyard_scheduler.app import create_app as scheduler_app
from trainyard_scheduler.core import SchedulerCore
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_shared.broker import make_broker
from trainyard_shared.bus import ensure_streams, open_buckets
from trainyard_shared.executors import ExecutorDirectory
from trainyard_shared.jobstore import JobStore
from trainyard_shared.jobview import JobView
from trainyard_shared.publishing import CommandSender, EventPublisher
from trainyard_shared.settings import CommonSettings
from trainyard_shared.testing.helpers import Bus, eventually, running

pytestmark = pytest.mark.service


async def stored(bus: Bus, stream: str, subject: str) -> list:
    """The messages stored in ``stream`` on ``subject``, read one by one (a work-queue stream
    allows no ordered consumer)."""
    state = (await bus.js.stream_info(stream)).state
    out = []
    for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
        try:
            msg = await bus.js.get_msg(stream, seq)
        except nats.js.errors.NotFoundError:
            continue
        if msg.subject == subject:
            out.append(msg)
    return out


def heartbeat(executor_id: str) -> bytes:
    beat = ExecutorHeartbeat(
        executor_id=executor_id,
        backend="none",
        capacity=Capacity(cpu=8, memory=8192),
        time=utcnow(),
        lease_seconds=600,
    )
    return beat.model_dump_json().encode()


async def test_a_start_command_over_max_payload_does_not_stop_the_reconcile_of_the_next_job(
    nats_server, prefix
):
    """A scheduled job whose start command (spec + the record carried along) is over the server's
    max_payload used to raise out of the reconcile at that record, every pass: a cancel of a job
    after it was never carried out. Now the spec travels once (in the record carried along; a
    command still too large goes without the record), and the next job's cancel is reconciled."""
    sb = make_broker(CommonSettings(nats_url=nats_server.url, prefix=prefix), "scheduler")
    await sb.broker.connect()
    try:
        await ensure_streams(sb.broker, sb.subjects)
        buckets = await open_buckets(sb.broker, sb.subjects)
        await buckets.executors.put("exec-big", heartbeat("exec-big"))
        now = utcnow()
        big_spec = JobSpec(name="big", command=["true"], env={"BLOB": "x" * 600_000})
        big = lifecycle.schedule(
            lifecycle.advance(lifecycle.new_record(new_job_id(), big_spec, now, "t"), JobState.QUEUED, now),
            "exec-big",
            now,
        )
        await buckets.jobs.create(big.job_id, big.model_dump_json().encode())
        doomed = lifecycle.advance(
            lifecycle.new_record(new_job_id(), JobSpec(name="doomed", command=["true"]), now, "t"),
            JobState.QUEUED,
            now,
        ).model_copy(update={"cancel_requested": True})
        await buckets.jobs.create(doomed.job_id, doomed.model_dump_json().encode())

        store, view = JobStore(buckets.jobs), JobView(buckets.jobs)
        store.on_written(view.apply)
        await view.start()
        assert [r.job_id for r in view.unfinished()] == [big.job_id, doomed.job_id]  # big first
        core = SchedulerCore(
            store,
            view,
            EventPublisher(sb.broker, sb.subjects),
            CommandSender(sb.broker, sb.subjects),
            ExecutorDirectory(buckets.executors),
            SchedulerSettings(replica_id="r"),
        )
        try:
            await core.reconcile(resend_scheduled=True)
        finally:
            await view.stop()

        cancelled = (await store.get(doomed.job_id))[0]
        assert cancelled.state == JobState.CANCELLED
        async with Bus(nats_server.url, prefix) as bus:
            starts = await stored(
                bus, sb.subjects.streams.exec, sb.subjects.exec_command("exec-big", "start")
            )
        commands = [StartAttempt.model_validate_json(m.data) for m in starts]
        assert [(c.job_id, c.spec) for c in commands] == [(big.job_id, None)]  # once: in the record
        assert commands[0].job_spec.env["BLOB"] == big_spec.env["BLOB"]
    finally:
        await sb.broker.stop()


async def test_a_start_command_that_failed_to_publish_is_sent_again_within_seconds(
    common, nats_server, prefix
):
    """The executors' command stream is gone for a moment (as while a stream has no leader): the
    job is scheduled by compare-and-set but its start command cannot be stored. The scheduler used
    to fail the pass and leave the job to the reconciler's re-send (``start_resend_seconds``, set
    to 300 s here); the owed command now follows within seconds once the stream is back."""
    settings = SchedulerSettings(tick_seconds=0.2, start_resend_seconds=300, submitted_grace_seconds=1)
    scheduler = scheduler_app(common, settings)
    async with Bus(nats_server.url, prefix) as bus, running(scheduler):
        exec_stream = bus.subjects.streams.exec
        config = (await bus.js.stream_info(exec_stream)).config
        await bus.js.delete_stream(exec_stream)
        executors = await bus.js.key_value(bus.subjects.buckets.executors)
        await executors.put("exec-gap", heartbeat("exec-gap"))
        job_id = await bus.submit(JobSpec(name="gap", command=["true"]))
        await bus.wait_state(job_id, "scheduled", timeout=20)

        await bus.js.add_stream(config)

        async def start_stored():
            msgs = await stored(bus, exec_stream, bus.subjects.exec_command("exec-gap", "start"))
            return [json.loads(m.data)["job_id"] for m in msgs] == [job_id]

        await eventually(start_stored, 15, "the start command stored after the stream came back")
        assert await bus.event_types(job_id) == ["submitted", "queued", "scheduled"]
