"""Job output lines to Logstash: telemetry reads the logs stream and ships each line through
python-logstash with ECS fields (trainyard_telemetry/joblogs.py).

Logstash cannot run here (not packaged for this machine), so the test is our side of the wire, as
for the services' own logs (tests/deploy/test_log_shipping.py): telemetry sends to a real TCP
listener on loopback, and each line must be one JSON object per line (the pipeline's
``json_lines`` codec) with the fields deploy/logstash/pipeline/trainyard.conf routes by.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from trainyard_contracts import JobSpec, LogChunk, LogLine
from trainyard_scheduler.testkit import quick_scheduler
from trainyard_shared.natsserver import free_port
from trainyard_shared.testing.helpers import running
from trainyard_shared.testing.listeners import LineListener
from trainyard_telemetry.app import create_app as telemetry_app
from trainyard_telemetry.joblogs import TAG, JobContext, JobOutputLimits, JobOutputShipper, logstash_handler
from trainyard_telemetry.settings import TelemetrySettings

from .jobs import PY, executor

pytestmark = [pytest.mark.insight]

JOB = (
    "import os, sys\n"
    "rank = os.environ.get('RANK', '0')\n"
    "print(f'hello from rank {rank}', flush=True)\n"
    "print(f'trouble on rank {rank}', file=sys.stderr, flush=True)\n"
)


@pytest.fixture
def listener() -> Iterator[LineListener]:
    server = LineListener()
    yield server
    server.close()


def shipped(listener: LineListener, job_id: str, count: int) -> list[dict]:
    """The job's lines among what the listener got (every one a JSON object), once ``count``
    of its stdout/stderr lines have arrived (or the deadline passed)."""

    def mine() -> list[dict]:
        docs = [json.loads(line) for line in listener.lines]
        return [d for d in docs if d.get("trainyard", {}).get("job", {}).get("id") == job_id]

    for _ in range(60):
        got = mine()
        if sum(d["trainyard"]["log"]["stream"] != "system" for d in got) >= count:
            return got
        listener.wait_for(len(listener.lines) + 1, timeout=1.0)
    return mine()


@pytest.mark.service
@pytest.mark.local
async def test_a_gang_jobs_output_lines_reach_logstash_with_ecs_fields(common, bus, listener):
    settings = TelemetrySettings(
        job_output_to_logstash=True, logstash_host="127.0.0.1", logstash_port=listener.port
    )
    async with (
        running(quick_scheduler(common)),
        running(executor(common)),
        running(telemetry_app(common, settings)),
    ):
        spec = JobSpec(name="chatty", command=[PY, "-c", JOB], queue="default", replicas=2)
        job_id = await bus.submit(spec)
        await bus.wait_state(job_id, "succeeded")
        docs = await asyncio.to_thread(shipped, listener, job_id, 4)

    output = {
        (d["trainyard"]["log"]["stream"], d["trainyard"]["job"]["rank"], d["message"])
        for d in docs
        if "rank" in d["trainyard"]["job"]
    }
    assert output == {
        ("stdout", 0, "hello from rank 0"),
        ("stdout", 1, "hello from rank 1"),
        ("stderr", 0, "trouble on rank 0"),
        ("stderr", 1, "trouble on rank 1"),
    }  # the "[rank N] " prefix the executor adds is the field, not the message
    first = next(d for d in docs if d["message"] == "hello from rank 0")
    assert first["tags"] == [TAG]  # what the pipeline routes job output by
    assert first["trainyard"]["job"] == {"id": job_id, "attempt": 1, "rank": 0, "queue": "default"}
    assert first["event"]["dataset"] == "trainyard.job_output" and first["ecs"]["version"]
    assert first["event"]["id"].startswith(f"{job_id}:1:")  # the pipeline's document id
    assert len({d["event"]["id"] for d in docs}) == len(docs)
    assert datetime.fromisoformat(first["@timestamp"].replace("Z", "+00:00")) <= datetime.now(UTC)
    system = [d for d in docs if d["trainyard"]["log"]["stream"] == "system"]
    assert system and "rank" not in system[0]["trainyard"]["job"]  # the executor's own lines


def chunk(job_id: str, lines: int, seq: int = 0) -> LogChunk:
    now = datetime.now(UTC)
    return LogChunk(
        job_id=job_id,
        attempt=1,
        seq=seq,
        lines=[LogLine(stream="stdout", text=f"line {i}", time=now) for i in range(lines)],
    )


@pytest.mark.integration
def test_lines_past_the_queues_cap_are_dropped_and_counted_never_waited_for(listener):
    """The sender thread is not started: nothing leaves, so the queue fills. Offering returns
    at once and drops what does not fit, counted; once started, the queued lines go out."""
    shipper = JobOutputShipper(
        lambda: logstash_handler("127.0.0.1", listener.port), limits=JobOutputLimits(max_lines=10)
    )
    shipper.offer(chunk("j-full", 25), JobContext(queue="q"))
    assert shipper.pending() == 10 and shipper.dropped["queue_full"] == 15
    shipper.start()
    lines = listener.wait_for(10)
    shipper.stop()
    assert [json.loads(line)["message"] for line in lines] == [f"line {i}" for i in range(10)]
    assert shipper.shipped == 10


@pytest.mark.integration
def test_a_line_logstash_does_not_take_is_counted_as_unsent():
    """No one listens on the port: python-logstash's handler cannot connect and drops the line."""
    shipper = JobOutputShipper(lambda: logstash_handler("127.0.0.1", free_port()))
    shipper.start()
    shipper.offer(chunk("j-away", 3), JobContext())
    shipper.stop()
    assert shipper.dropped["unsent"] == 3 and shipper.shipped == 0


@pytest.mark.unit
def test_turned_on_without_a_logstash_named_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("LOGSTASH_HOST", raising=False)
    monkeypatch.delenv("LOGSTASH_PORT", raising=False)
    with pytest.raises(ValueError, match="LOGSTASH_HOST and LOGSTASH_PORT"):
        TelemetrySettings(job_output_to_logstash=True).logstash_address()
    monkeypatch.setenv("LOGSTASH_HOST", "logstash")
    monkeypatch.setenv("LOGSTASH_PORT", "5959")
    assert TelemetrySettings(job_output_to_logstash=True).logstash_address() == ("logstash", 5959)
