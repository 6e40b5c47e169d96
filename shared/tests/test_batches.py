"""The batch consumer keeps every per-message guarantee of a durable consumer (real nats-server).

One batch holds good events, bodies that do not parse and an event whose handler always fails:
the good ones are handled once and acked, the bad bodies are dead-lettered at once with their
reason, the failing one is retried up to ``max_deliver`` and then dead-lettered, and the consumer
ends with nothing pending. One job's events stay in order while different jobs run side by side.
"""

from __future__ import annotations

import asyncio

import pytest

from trainyard_contracts import JobQueued, parse_job_event
from trainyard_shared.binding import connect_and_bind
from trainyard_shared.broker import make_broker
from trainyard_shared.bus import streams
from trainyard_shared.pullconsumer import batch_consumer
from trainyard_shared.testing.helpers import Bus, common_settings, eventually

pytestmark = [pytest.mark.service]

MAX_DELIVER = 3


@pytest.fixture
async def bus(nats_server, prefix):
    async with Bus(nats_server.url, prefix) as b:
        yield b


async def test_each_message_of_a_batch_is_acked_retried_or_parked_on_its_own(
    nats_server, prefix, tmp_path, bus
):
    common = common_settings(nats_server.url, prefix, tmp_path / "data")
    sb = make_broker(common, "batchtest", max_deliver=MAX_DELIVER)
    seen: list[tuple[str, int]] = []
    calls: dict[str, int] = {}
    in_flight = 0
    most_in_flight = 0

    @batch_consumer(
        sb,
        sb.subjects.job_event_kind("queued"),
        stream=streams(sb.subjects).jobs,
        durable="batch-test",
        parse=parse_job_event,
        batch=64,
        concurrency=8,
        key=lambda e: e.job_id,
        max_deliver=MAX_DELIVER,
        title="test",
        description="test",
    )
    async def handle(event: JobQueued) -> None:
        nonlocal in_flight, most_in_flight
        calls[event.job_id] = calls.get(event.job_id, 0) + 1
        if event.job_id == "always-fails":
            raise RuntimeError("this handler never works")
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        await asyncio.sleep(0)  # let the other lanes in: they run side by side
        seen.append((event.job_id, event.attempt))
        in_flight -= 1

    await connect_and_bind(sb, common)
    # everything is in the stream before the consumer starts, so it arrives as one batch
    for job in ("a", "b", "c"):
        for attempt in (1, 2, 3):
            body = JobQueued(job_id=job, attempt=attempt, queue="default").model_dump_json().encode()
            await bus.js.publish(sb.subjects.job(job, "queued"), body)
    await bus.js.publish(sb.subjects.job("junk", "queued"), b"{not json")
    await bus.js.publish(sb.subjects.job("junk", "queued"), b'{"type": "queued", "job_id": ""}')
    failing = JobQueued(job_id="always-fails", attempt=1, queue="default").model_dump_json().encode()
    await bus.js.publish(sb.subjects.job("always-fails", "queued"), failing)
    await sb.broker.start()
    await sb.start_pullers()
    try:

        async def letters():
            msgs = await bus.messages(sb.subjects.dlq("batchtest"), sb.subjects.streams.dlq)
            return msgs if len(msgs) >= 3 else None

        parked = await eventually(letters, 30, "three dead letters")

        async def drained():
            info = await bus.js.consumer_info(sb.subjects.streams.jobs, "batch-test")
            return info.num_ack_pending == 0 and info.num_pending == 0

        await eventually(drained, 30, "nothing left pending")
    finally:
        await sb.stop_pullers()
        await sb.broker.stop()

    assert sorted(seen) == [(j, a) for j in "abc" for a in (1, 2, 3)]  # each good one once
    for job in "abc":
        assert [a for j, a in seen if j == job] == [1, 2, 3]  # a job's events in their order
    assert most_in_flight > 1  # different jobs side by side
    assert calls["always-fails"] == MAX_DELIVER
    reasons = sorted(m.headers["Trainyard-Reason"] for m in parked)
    assert len(parked) == 3
    assert reasons[0].startswith("failed 3 times, last: RuntimeError: this handler never works")
    assert all(r.startswith("invalid message:") for r in reasons[1:])
    assert all(m.headers["Trainyard-Service"] == "batchtest" for m in parked)


async def test_no_more_than_batch_messages_are_ours_and_a_keys_order_holds_across_pulls(
    nats_server, prefix, tmp_path, bus
):
    """Flow control: with ``batch=4`` and two handlers stuck, the server has handed over exactly
    four messages (two handled, two waiting in their lanes) and keeps the other sixteen until
    there is room. One job's messages, spread over many pulls, are still handled in order."""
    common = common_settings(nats_server.url, prefix, tmp_path / "data")
    sb = make_broker(common, "flowtest")
    gate = asyncio.Event()
    stuck = 0
    seen: list[tuple[str, int]] = []

    @batch_consumer(
        sb,
        sb.subjects.job_event_kind("queued"),
        stream=streams(sb.subjects).jobs,
        durable="flow-test",
        parse=parse_job_event,
        batch=4,
        concurrency=2,
        key=lambda e: e.job_id,
        title="test",
        description="test",
    )
    async def handle(event: JobQueued) -> None:
        nonlocal stuck
        stuck += 1
        await gate.wait()
        seen.append((event.job_id, event.attempt))

    await connect_and_bind(sb, common)
    for attempt in range(1, 11):
        for job in ("a", "b"):
            body = JobQueued(job_id=job, attempt=attempt, queue="default").model_dump_json().encode()
            await bus.js.publish(sb.subjects.job(job, "queued"), body)
    await sb.broker.start()
    await sb.start_pullers()
    try:
        await eventually(lambda: _true(stuck == 2), 30, "two handlers stuck")

        async def four_handed_over():
            info = await bus.js.consumer_info(sb.subjects.streams.jobs, "flow-test")
            return info if info.num_ack_pending == 4 and info.num_pending == 16 else None

        await eventually(four_handed_over, 30, "four messages ours, sixteen left on the server")
        gate.set()

        async def drained():
            info = await bus.js.consumer_info(sb.subjects.streams.jobs, "flow-test")
            return info.num_ack_pending == 0 and info.num_pending == 0 and len(seen) == 20

        await eventually(drained, 30, "all twenty handled and acked")
    finally:
        gate.set()
        await sb.stop_pullers()
        await sb.broker.stop()
    for job in "ab":
        assert [a for j, a in seen if j == job] == list(range(1, 11))


async def test_the_consumer_pulls_again_after_the_server_restarts(fresh_nats_server, prefix, tmp_path):
    """The waiting pull request dies with the server; the missing heartbeats tell the puller,
    which asks again once the client has reconnected, and a message stored after the restart
    is handled."""
    server = fresh_nats_server
    common = common_settings(server.url, prefix, tmp_path / "data")
    sb = make_broker(common, "restarttest")
    seen: list[str] = []

    @batch_consumer(
        sb,
        sb.subjects.job_event_kind("queued"),
        stream=streams(sb.subjects).jobs,
        durable="restart-test",
        parse=parse_job_event,
        batch=8,
        title="test",
        description="test",
    )
    async def handle(event: JobQueued) -> None:
        seen.append(event.job_id)

    await connect_and_bind(sb, common)
    await sb.broker.start()
    await sb.start_pullers()
    try:
        async with Bus(server.url, prefix) as bus:
            body = JobQueued(job_id="before", attempt=1, queue="default").model_dump_json().encode()
            await bus.js.publish(sb.subjects.job("before", "queued"), body)
        await eventually(lambda: _true("before" in seen), 30, "the first message handled")
        server.stop()
        server.start()
        async with Bus(server.url, prefix) as bus:
            body = JobQueued(job_id="after", attempt=1, queue="default").model_dump_json().encode()
            await bus.js.publish(sb.subjects.job("after", "queued"), body)
        await eventually(lambda: _true("after" in seen), 60, "the message stored after the restart handled")
    finally:
        await sb.stop_pullers()
        await sb.broker.stop()
    assert seen == ["before", "after"]


async def _true(value: bool) -> bool | None:
    return True if value else None


async def test_a_consumer_made_with_other_subjects_is_updated_and_keeps_its_place(
    nats_server, prefix, tmp_path, bus
):
    """A release narrows a durable consumer's subjects (the scheduler stopped taking submitted
    events): on start the existing consumer is updated, not recreated, so what it had acked stays
    acked and what it now takes is still delivered."""
    from nats.js.api import ConsumerConfig as JsConsumerConfig

    common = common_settings(nats_server.url, prefix, tmp_path / "data")
    sb = make_broker(common, "narrowtest")
    await connect_and_bind(sb, common)
    stream = sb.subjects.streams.jobs
    queued, running = sb.subjects.job_event_kind("queued"), sb.subjects.job_event_kind("running")
    await bus.js.add_consumer(
        stream,
        config=JsConsumerConfig(
            name="narrow-test", durable_name="narrow-test", filter_subjects=[queued, running], ack_wait=30
        ),
    )
    old = JobQueued(job_id="old", attempt=1, queue="default").model_dump_json().encode()
    await bus.js.publish(sb.subjects.job("old", "queued"), old)
    sub = await bus.js.pull_subscribe_bind("narrow-test", stream=stream)
    (held,) = await sub.fetch(1, timeout=10)
    await held.ack()  # handled by the release before
    await sub.unsubscribe()
    new = JobQueued(job_id="new", attempt=1, queue="default").model_dump_json().encode()
    await bus.js.publish(sb.subjects.job("new", "queued"), new)
    seen: list[str] = []

    @batch_consumer(
        sb,
        queued,
        stream=streams(sb.subjects).jobs,
        durable="narrow-test",
        parse=parse_job_event,
        filter_subjects=[queued],
        title="test",
        description="test",
    )
    async def handle(event: JobQueued) -> None:
        seen.append(event.job_id)

    await sb.broker.start()
    await sb.start_pullers()
    try:
        await eventually(lambda: _true(seen == ["new"]), 30, "the new message handled, the old one not again")
        info = await bus.js.consumer_info(stream, "narrow-test")
    finally:
        await sb.stop_pullers()
        await sb.broker.stop()
    assert info.config.filter_subjects == [queued]
    assert seen == ["new"]


async def test_a_lingering_consumer_takes_what_gathered_and_still_handles_each_once(
    nats_server, prefix, tmp_path, bus
):
    """``linger``: the first message at once, then what gathered in each linger, in order; every
    message handled and acked once, messages that come later still arrive (the consumer goes
    back to waiting when an answer comes back empty)."""
    common = common_settings(nats_server.url, prefix, tmp_path / "data")
    sb = make_broker(common, "lingertest")
    seen: list[tuple[str, int]] = []

    @batch_consumer(
        sb,
        sb.subjects.job_event_kind("queued"),
        stream=streams(sb.subjects).jobs,
        durable="linger-test",
        parse=parse_job_event,
        batch=8,
        linger=0.05,
        title="test",
        description="test",
    )
    async def handle(event: JobQueued) -> None:
        seen.append((event.job_id, event.attempt))

    async def publish(job: str, attempts: range) -> None:
        for attempt in attempts:
            body = JobQueued(job_id=job, attempt=attempt, queue="default").model_dump_json().encode()
            await bus.js.publish(sb.subjects.job(job, "queued"), body)

    await connect_and_bind(sb, common)
    await sb.broker.start()
    await sb.start_pullers()
    try:
        await publish("a", range(1, 21))  # more than one answer's worth (batch 8)
        await eventually(lambda: _true(len(seen) == 20), 30, "the first twenty handled")
        await publish("b", range(1, 4))  # after the consumer went back to waiting
        await eventually(lambda: _true(len(seen) == 23), 30, "the later three handled")

        async def drained():
            info = await bus.js.consumer_info(sb.subjects.streams.jobs, "linger-test")
            return info.num_ack_pending == 0 and info.num_pending == 0

        await eventually(drained, 30, "all acked")
    finally:
        await sb.stop_pullers()
        await sb.broker.stop()
    assert seen == [("a", n) for n in range(1, 21)] + [("b", n) for n in range(1, 4)]


async def test_what_is_stored_after_a_stop_goes_to_the_next_consumer_at_once(
    nats_server, prefix, tmp_path, bus
):
    """A stopped puller's waiting request dies with its inbox: a message stored after the stop is
    not held for ``ack_wait`` (an hour here) but handled by the consumer started next."""
    common = common_settings(nats_server.url, prefix, tmp_path / "data")
    seen: list[str] = []

    def consumer(name: str):
        sb = make_broker(common, name)

        @batch_consumer(
            sb,
            sb.subjects.job_event_kind("queued"),
            stream=streams(sb.subjects).jobs,
            durable="handover-test",
            parse=parse_job_event,
            batch=16,
            ack_wait=3600,
            title="test",
            description="test",
        )
        async def handle(event: JobQueued) -> None:
            seen.append(f"{name}:{event.job_id}")

        return sb

    first = consumer("first")
    await connect_and_bind(first, common)
    await first.broker.start()
    await first.start_pullers()
    await first.stop_pullers()
    await first.broker.stop()
    body = JobQueued(job_id="after-stop", attempt=1, queue="default").model_dump_json().encode()
    await bus.js.publish(first.subjects.job("after-stop", "queued"), body)
    second = consumer("second")
    await second.broker.start()
    await second.start_pullers()
    try:
        await eventually(lambda: _true(seen == ["second:after-stop"]), 30, "handled by the next consumer")
    finally:
        await second.stop_pullers()
        await second.broker.stop()
