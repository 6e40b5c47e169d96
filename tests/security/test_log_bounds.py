"""One attempt's output cannot hurt the executor or other jobs' logs (issue 13), against a real
nats-server (default ``max_payload``, 1 MiB):

- 200 lines of 64 KiB (12.5 MiB) are stored whole, in chunks each under ``max_payload``; a line
  longer than a chunk is split, not cut short;
- while the logs stream does not take chunks, what the shipper holds is bounded (bytes it buffers,
  counted, not the process's RSS), line() never raises, and the failure is one warning for the
  attempt, not a traceback per line;
- past the per-attempt cap: one truncation marker, the rest dropped and counted, and another job's
  logs are intact; the logs stream's per-subject limit is the server-side guard.
"""

from __future__ import annotations

import json
import logging

import pytest
from faststream.nats import NatsBroker

from trainyard_contracts import Subjects
from trainyard_executor.attemptstream import AttemptStream
from trainyard_executor.logbudget import LogLimits
from trainyard_executor.logship import LogShipper
from trainyard_shared.bus import ensure_streams
from trainyard_shared.natshandle import NatsHandle
from trainyard_shared.streamlimits import StreamLimits
from trainyard_shared.testing.helpers import Bus

from .logread import stored_chunks, texts

pytestmark = [pytest.mark.security, pytest.mark.service]

KiB = 1024
MiB = 1024 * KiB


async def stored(bus: Bus, subjects: Subjects, job_id: str) -> list:
    return await stored_chunks(bus, job_id)


async def test_200_lines_of_64_kib_are_stored_whole_in_chunks_under_max_payload(nats_server, prefix, caplog):
    subjects = Subjects(prefix)
    async with NatsBroker(nats_server.url) as broker, Bus(nats_server.url, prefix) as bus:
        await broker.start()
        await ensure_streams(broker, subjects)
        max_payload = NatsHandle(broker).max_payload
        shipper = LogShipper(
            AttemptStream.of(broker, subjects, "logs", "jobbig1", 1), flush_seconds=0.2, batch_lines=200
        )
        lines = [f"{i:04d}" + "x" * (64 * KiB - 4) for i in range(200)]
        with caplog.at_level(logging.WARNING):
            for text in lines:
                await shipper.line("stdout", text)
            await shipper.close()
        msgs = await stored(bus, subjects, "jobbig1")
    assert texts(msgs) == lines  # every line, whole, in order
    assert len(msgs) > 1 and all(len(m.data) + 1024 <= max_payload for m in msgs)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_line_longer_than_a_chunk_is_split_not_cut(nats_server, prefix):
    subjects = Subjects(prefix)
    async with NatsBroker(nats_server.url) as broker, Bus(nats_server.url, prefix) as bus:
        await broker.start()
        await ensure_streams(broker, subjects)
        shipper = LogShipper(
            AttemptStream.of(broker, subjects, "logs", "jobbig2", 1), flush_seconds=0.2, batch_lines=200
        )
        long_line = "".join(chr(0x41 + i % 26) for i in range(3 * MiB)) + "é" * 1000
        await shipper.line("stdout", long_line)
        await shipper.close()
        msgs = await stored(bus, subjects, "jobbig2")
    got = texts(msgs)
    assert len(got) > 1 and "".join(got) == long_line


async def test_a_stream_that_does_not_take_chunks_costs_bounded_memory_and_one_warning(
    nats_server, prefix, caplog
):
    """The logs stream does not exist at first: every publish fails. 20 MiB of output later the
    shipper holds at most its buffer bound (plus the one chunk it keeps to send again), has not
    raised, and logged one warning; once the stream exists, close() stores what it kept and a
    line saying how much it dropped."""
    subjects = Subjects(prefix)
    limits = LogLimits(max_buffered=1 * MiB)
    async with NatsBroker(nats_server.url) as broker, Bus(nats_server.url, prefix) as bus:
        await broker.start()
        shipper = LogShipper(
            AttemptStream.of(broker, subjects, "logs", "jobaway", 1),
            flush_seconds=0.05,
            batch_lines=50,
            limits=limits,
        )
        most_held = 0
        with caplog.at_level(logging.WARNING, logger="trainyard.executor.logs"):
            for i in range(320):
                await shipper.line("stdout", f"{i:04d}" + "y" * (64 * KiB - 4))  # never raises
                unsent = len(shipper._unsent[1]) if shipper._unsent else 0
                held = sum(len(line.text) for line in shipper._buffer) + unsent
                most_held = max(most_held, held)
        warnings = [r for r in caplog.records if r.name == "trainyard.executor.logs"]
        assert most_held <= limits.max_buffered + shipper.chunk_bytes
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        await ensure_streams(broker, subjects)
        await shipper.close()
        got = texts(await stored(bus, subjects, "jobaway"))
    assert got[0].startswith("0000")
    assert "of output dropped: the log stream did not take them" in got[-1]
    assert len(got) < 320


async def test_past_the_cap_one_marker_the_rest_counted_and_other_jobs_are_intact(nats_server, prefix):
    subjects = Subjects(prefix)
    cap = 1 * MiB
    async with NatsBroker(nats_server.url) as broker, Bus(nats_server.url, prefix) as bus:
        await broker.start()
        await ensure_streams(broker, subjects)
        loud = LogShipper(
            AttemptStream.of(broker, subjects, "logs", "jobloud", 1),
            flush_seconds=0.2,
            batch_lines=200,
            limits=LogLimits(max_bytes=cap),
        )
        quiet = LogShipper(
            AttemptStream.of(broker, subjects, "logs", "jobquiet", 1), flush_seconds=0.2, batch_lines=200
        )
        for i in range(5 * 1024):  # 5 MiB of 1 KiB lines
            await loud.line("stdout", f"{i:05d}" + "z" * (KiB - 5))
            if i % 50 == 0:
                await quiet.line("stdout", f"quiet {i}")
        await loud.system("attempt 1 ended: succeeded")  # the executor's own lines are not capped
        await loud.close()
        await quiet.close()
        loud_lines = texts(await stored(bus, subjects, "jobloud"))
        quiet_lines = texts(await stored(bus, subjects, "jobquiet"))
    markers = [t for t in loud_lines if t == f"[trainyard: output truncated after {cap} bytes]"]
    assert len(markers) == 1
    output = [t for t in loud_lines if not t.startswith("[trainyard") and not t.startswith("attempt")]
    assert sum(len(t) for t in output) <= cap and len(output) == cap // KiB
    assert loud_lines[-2] == "attempt 1 ended: succeeded"
    assert loud_lines[-1] == (
        f"[trainyard: {5 * 1024 - cap // KiB} lines ({(5 * 1024 - cap // KiB) * KiB} bytes) of output "
        f"dropped after the cap of {cap} bytes]"
    )
    assert quiet_lines == [f"quiet {i}" for i in range(0, 5 * 1024, 50)]


async def test_the_logs_stream_keeps_a_bounded_number_of_chunks_per_attempt(nats_server, prefix):
    """The server-side guard: a publisher that ignores the executor's cap fills only its own
    subject's share (oldest dropped first); another attempt's chunks stay."""
    subjects = Subjects(prefix)
    limits = StreamLimits(logs_max_msgs_per_subject=10)
    async with NatsBroker(nats_server.url) as broker, Bus(nats_server.url, prefix) as bus:
        await broker.start()
        await ensure_streams(broker, subjects, limits=limits)
        info = await bus.js.stream_info(subjects.streams.logs)
        assert info.config.max_msgs_per_subject == 10
        await bus.js.publish(subjects.log("jobother", 1), b'{"kept": true}')
        for i in range(100):
            await bus.js.publish(subjects.log("jobflood", 1), json.dumps({"i": i}).encode())
        flood = [json.loads(m.data)["i"] for m in await stored(bus, subjects, "jobflood")]
        other = await stored(bus, subjects, "jobother")
    assert flood == list(range(90, 100))
    assert [json.loads(m.data) for m in other] == [{"kept": True}]


async def test_the_dead_letter_and_job_event_streams_are_bounded(nats_server, prefix):
    """Declared limits (the server enforces them): age and bytes, oldest dropped first."""
    from nats.js.api import DiscardPolicy

    subjects = Subjects(prefix)
    defaults = StreamLimits()
    async with NatsBroker(nats_server.url) as broker, Bus(nats_server.url, prefix) as bus:
        await broker.start()
        await ensure_streams(broker, subjects)
        dlq = (await bus.js.stream_info(subjects.streams.dlq)).config
        jobs = (await bus.js.stream_info(subjects.streams.jobs)).config
    assert (dlq.max_bytes, dlq.max_age, dlq.discard) == (
        defaults.dlq_max_bytes,
        defaults.dlq_max_age_days * 86400,
        DiscardPolicy.OLD,
    )
    assert (jobs.max_bytes, jobs.max_age, jobs.discard) == (
        defaults.jobs_max_bytes,
        defaults.jobs_max_age_days * 86400,
        DiscardPolicy.OLD,
    )
