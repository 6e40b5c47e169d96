"""A durable consumer deleted under a running stack (any client user could, before per-service
NATS permissions) is created again by its puller, after a pause, and jobs keep flowing.

Real nats-server, the scheduler and executor in this process, jobs as local processes. What the
clients sent from the deletion until the next job succeeded is counted on the server (``/varz``
``in_msgs``): a puller that asks again at once after the server's 503 (no consumer) sends thousands
of pull requests a second. (A subscription to the pull-request subjects would be an answer in
itself: with a listener the server sends no 503, so the count comes from the monitor.)
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request

import pytest

from trainyard_contracts import JobSpec
from trainyard_executor.app import create_app as executor_app
from trainyard_executor.testkit import quick_executor_settings
from trainyard_scheduler.testkit import quick_scheduler
from trainyard_shared.testing.helpers import eventually, running

pytestmark = [pytest.mark.security, pytest.mark.service, pytest.mark.local]
PY = sys.executable


def stack(common):
    scheduler = quick_scheduler(common)
    executor = executor_app(
        common,
        quick_executor_settings("exec-lost"),
    )
    return scheduler, executor


async def durables(bus, stream: str) -> set[str]:
    return {info.name for info in await bus.js.consumers_info(stream) if info.config.durable_name}


async def messages_in(nats_server) -> int:
    url = f"http://127.0.0.1:{nats_server.monitor_port}/varz"

    def read() -> int:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(json.load(answer)["in_msgs"])

    return await asyncio.to_thread(read)


async def test_deleted_durable_consumers_are_created_again_and_jobs_keep_flowing(common, bus, nats_server):
    streams = bus.subjects.streams
    scheduler, executor = stack(common)
    async with running(scheduler), running(executor):
        first = await bus.submit(JobSpec(name="before", command=[PY, "-c", "print('before')"]))
        await bus.wait_state(first, "succeeded")
        gone = {stream: await durables(bus, stream) for stream in (streams.jobs, streams.exec)}
        assert all(gone.values()), gone  # the scheduler's on jobs, the executor's on exec

        before = await messages_in(nats_server)
        for stream, names in gone.items():
            for name in names:
                await bus.js.delete_consumer(stream, name)

        async def recreated() -> bool:
            for stream, names in gone.items():
                if not names <= await durables(bus, stream):
                    return False
            return True

        await eventually(recreated, 30, "every deleted durable consumer created again")
        second = await bus.submit(JobSpec(name="after", command=[PY, "-c", "print('after')"]))
        record = await bus.wait_state(second, "succeeded", "failed", timeout=30)
        sent = await messages_in(nats_server) - before
    assert record.state.value == "succeeded"
    assert "after" in await bus.log_text(second)
    # a job's own traffic, heartbeats and a few pull requests per consumer while it is gone (each
    # after a growing pause): hundreds at most, not a spin
    assert sent < 3000, f"{sent} messages sent while consumers were gone: a busy loop"
