"""Reading the executors bucket leaves nothing behind on the server (real nats-server).

The scheduler reads every heartbeat on each planning pass, several times a second. Each read is a
watch, so a consumer on the server; these must go away within seconds, or a long run reaches the
server's consumer limit (it did, with ``keys()``, whose consumers stayed for five minutes).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from faststream.nats import NatsBroker

from trainyard_contracts import Capacity, ExecutorHeartbeat, Subjects
from trainyard_shared.bus import open_buckets
from trainyard_shared.executors import ExecutorDirectory
from trainyard_shared.natshandle import NatsHandle
from trainyard_shared.testing.helpers import eventually

pytestmark = pytest.mark.service


async def test_reads_see_every_live_heartbeat_and_leave_no_consumer_behind(nats_server, prefix):
    broker = NatsBroker(nats_server.url)
    async with broker:
        await broker.start()
        subjects = Subjects(prefix)
        buckets = await open_buckets(broker, subjects)
        directory = ExecutorDirectory(buckets.executors)
        assert await directory.all() == []
        for name in ("exec-a", "exec-b", "exec-c"):
            await directory.put(
                ExecutorHeartbeat(executor_id=name, backend="local", capacity=Capacity(cpu=1, memory=64))
            )
        await directory.remove("exec-b")
        for _ in range(20):
            online = await directory.online(datetime.now(UTC))
        assert sorted(online) == ["exec-a", "exec-c"]

        js = NatsHandle(broker).jetstream
        stream = f"KV_{subjects.buckets.executors}"

        async def no_consumers_left():
            return (await js.stream_info(stream)).state.consumer_count == 0

        await eventually(no_consumers_left, 30, "the reads' consumers gone from the server")


async def test_a_started_directory_follows_heartbeats_and_departures(nats_server, prefix):
    broker = NatsBroker(nats_server.url)
    async with broker:
        await broker.start()
        buckets = await open_buckets(broker, Subjects(prefix))
        writer, follower = ExecutorDirectory(buckets.executors), ExecutorDirectory(buckets.executors)
        await follower.start()
        try:
            beat = ExecutorHeartbeat(
                executor_id="exec-a", backend="local", capacity=Capacity(cpu=1, memory=64)
            )
            await writer.put(beat)

            async def sees(names):
                return sorted(await follower.online(datetime.now(UTC))) == names

            await eventually(lambda: sees(["exec-a"]), 10, "the heartbeat followed")
            await writer.remove("exec-a")
            await eventually(lambda: sees([]), 10, "the departure followed")
            assert await follower.online(datetime.now(UTC), fresh=True) == {}
        finally:
            await follower.stop()
