"""An attempt's output to the logs stream in chunks (``LogShipper``), against a real nats-server:
batched lines, the flush timer, and a chunk whose publish failed sent again as the same chunk."""

from __future__ import annotations

import json

import pytest
from faststream.nats import NatsBroker

from trainyard_contracts import Subjects
from trainyard_executor.attemptstream import AttemptStream
from trainyard_executor.logship import LogShipper
from trainyard_shared.bus import ensure_streams
from trainyard_shared.testing.helpers import Bus, eventually

pytestmark = pytest.mark.service


async def chunks(bus: Bus, subjects: Subjects, job_id: str) -> list[dict]:
    msgs = await bus.messages(subjects.logs_of(job_id), subjects.streams.logs)
    return [json.loads(m.data) for m in msgs]


async def test_lines_go_out_in_one_chunk_at_close_and_on_the_timer(nats_server, prefix):
    subjects = Subjects(prefix)
    async with NatsBroker(nats_server.url) as broker, Bus(nats_server.url, prefix) as bus:
        await broker.start()
        await ensure_streams(broker, subjects)
        shipper = LogShipper(
            AttemptStream.of(broker, subjects, "logs", "jobship1", 1), flush_seconds=0.2, batch_lines=100
        )
        await shipper.line("stdout", "one")
        await shipper.line("stderr", "two")

        async def timed():
            return await chunks(bus, subjects, "jobship1") or None

        first = await eventually(timed, 10, "the timer's chunk")
        assert [[line["text"] for line in c["lines"]] for c in first] == [["one", "two"]]
        await shipper.system("three")
        await shipper.close()
        got = await chunks(bus, subjects, "jobship1")
        assert [c["seq"] for c in got] == [0, 1]
        assert [line["text"] for line in got[1]["lines"]] == ["three"]
        assert shipper._timer is None  # close() left no timer behind


async def test_a_chunk_whose_publish_failed_is_sent_again_whole(nats_server, prefix):
    """The logs stream does not exist at first, so the publish fails the way a broker that does
    not take it fails (line() does not raise: a failing sink is noted once, see
    tests/security/test_log_bounds.py); once it exists, close() sends the same chunk (same seq,
    every line)."""
    subjects = Subjects(prefix)
    async with NatsBroker(nats_server.url) as broker, Bus(nats_server.url, prefix) as bus:
        await broker.start()
        shipper = LogShipper(
            AttemptStream.of(broker, subjects, "logs", "jobship2", 1), flush_seconds=60, batch_lines=2
        )
        await shipper.line("stdout", "a")
        await shipper.line("stdout", "b")  # the batch is full: a flush, which fails
        assert shipper._unsent is not None  # kept, to be sent again as is
        await shipper.line("stdout", "c")
        await ensure_streams(broker, subjects)
        await shipper.close()
        got = await chunks(bus, subjects, "jobship2")
        assert [(c["seq"], [line["text"] for line in c["lines"]]) for c in got] == [
            (0, ["a", "b"]),
            (1, ["c"]),
        ]
