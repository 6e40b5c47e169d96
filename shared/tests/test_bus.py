"""The shared bus pieces against a real nats-server: streams, job store CAS, dead letters."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from faststream import AckPolicy
from faststream.nats import ConsumerConfig, NatsBroker, PullSub
from pydantic import BaseModel

from trainyard_contracts import JobSpec, JobState, Subjects, lifecycle
from trainyard_shared.bus import ensure_streams, open_buckets, streams
from trainyard_shared.deadletter import make_dead_letter_middleware
from trainyard_shared.jobstore import JobStore, RecordExists
from trainyard_shared.natshandle import NatsHandle

pytestmark = pytest.mark.service


async def _wait_for(predicate, timeout: float = 10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.05)


async def test_job_store_compare_and_set(nats_server, prefix):
    subjects = Subjects(prefix)
    broker = NatsBroker(nats_server.url)
    async with broker:
        await broker.start()
        buckets = await open_buckets(broker, subjects)
        store = JobStore(buckets.jobs)
        now = datetime.now(UTC)
        record = lifecycle.new_record("job000001", JobSpec(name="a", command=["true"]), now, None)
        await store.create(record)
        with pytest.raises(RecordExists):
            await store.create(record)

        # two writers race from the same revision: exactly one wins, the other re-reads
        results = await asyncio.gather(
            store.update(
                "job000001",
                lambda r: (
                    lifecycle.advance(r, JobState.QUEUED, now) if r.state == JobState.SUBMITTED else None
                ),
            ),
            store.update(
                "job000001",
                lambda r: (
                    lifecycle.advance(r, JobState.QUEUED, now)
                    if r.state.pending is False and r.state == JobState.SUBMITTED
                    else None
                ),
            ),
        )
        changed = [r for r in results if r is not None]
        assert len(changed) == 1
        final, _ = await store.get("job000001")
        assert final.state == JobState.QUEUED


class Ping(BaseModel):
    n: int


async def test_invalid_and_failing_messages_are_dead_lettered(nats_server, prefix):
    subjects = Subjects(prefix)
    broker = NatsBroker(
        nats_server.url, middlewares=(make_dead_letter_middleware(subjects, "svc", max_deliver=3),)
    )
    seen: list[int] = []
    job_stream = streams(subjects).jobs

    @broker.subscriber(
        subjects.job_event_kind("ping"),
        stream=job_stream,
        durable="pinger",
        pull_sub=PullSub(batch_size=10, timeout=0.2),
        config=ConsumerConfig(max_deliver=3, ack_wait=5),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def handle(ping: Ping) -> None:
        seen.append(ping.n)
        if ping.n == 13:
            raise RuntimeError("unlucky")

    async with broker:
        await ensure_streams(broker, subjects)
        await broker.start()
        await broker.publish(b"{not json", subjects.job("j1", "ping"), stream=job_stream.name)
        await broker.publish({"n": 13}, subjects.job("j2", "ping"), stream=job_stream.name)
        await broker.publish({"n": 1}, subjects.job("j3", "ping"), stream=job_stream.name)

        js = NatsHandle(broker).jetstream

        async def dlq_count():
            info = await js.stream_info(subjects.streams.dlq)
            return info.state.messages >= 2

        await _wait_for(dlq_count)
        sub = await js.pull_subscribe(subjects.dlq("svc"), durable="reader")
        msgs = await sub.fetch(2, timeout=5)
        reasons = sorted(m.headers["Trainyard-Reason"] for m in msgs)
        assert reasons[0].startswith("failed 3 times, last: RuntimeError: unlucky")
        assert reasons[1].startswith("invalid message")
        assert seen.count(13) == 3  # bounded redelivery, then parked
        assert 1 in seen  # the service kept serving


async def test_publishes_in_flight_together_are_stored_in_their_order_once(nats_server, prefix):
    """``publish_in_order``: a job's queued and scheduled events and its start command leave
    together; the stream stores the events in the order given, a second send under the same
    message ids is acked as duplicates (nothing stored twice), and a publish no stream takes
    raises instead of being dropped."""
    from nats.js.errors import NoStreamResponseError

    from trainyard_contracts import JobQueued, JobScheduled, StartAttempt
    from trainyard_shared.publishing import CommandSender, EventPublisher, Outgoing, publish_in_order
    from trainyard_shared.testing.helpers import Bus

    subjects = Subjects(prefix)
    broker = NatsBroker(nats_server.url)
    async with broker, Bus(nats_server.url, prefix) as bus:
        await broker.start()
        await ensure_streams(broker, subjects)
        events, commands = EventPublisher(broker, subjects), CommandSender(broker, subjects)
        spec = JobSpec(name="a", command=["true"])
        batch = [
            events.outgoing(JobQueued(job_id="jobpio001", queue="default")),
            events.outgoing(
                JobScheduled(
                    job_id="jobpio001", executor_id="e1", resources={"cpu": 1, "memory": 1, "gpu": 0}
                )
            ),
            commands.outgoing(StartAttempt(job_id="jobpio001", attempt=1, executor_id="e1", spec=spec)),
        ]
        first = await publish_in_order(broker, batch)
        again = await publish_in_order(broker, batch)
        stored = await bus.messages(subjects.job("jobpio001", "*"), subjects.streams.jobs)
        with pytest.raises(NoStreamResponseError):
            await publish_in_order(broker, [batch[0], Outgoing("nowhere.at.all", b"{}", {}, "nostream")])
    assert [m.subject.rsplit(".", 1)[-1] for m in stored] == ["queued", "scheduled"]
    assert not any(ack.duplicate for ack in first)
    assert all(ack.duplicate for ack in again)
