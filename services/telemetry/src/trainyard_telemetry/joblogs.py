"""Job output lines to Logstash (ELK), named with ECS fields; off the job path and bounded.

Telemetry ships them, not the executor: the lines are on the logs stream already (the executor
publishes every attempt's output there), telemetry reads that stream with a durable consumer (a
restart catches up), knows each job's queue from the job events it follows, and is the service
whose one concern is handing what happens to the observability stack. The executor keeps its own
(running jobs) and needs no route to Logstash from the machines that run jobs, and nothing a job
prints waits for Logstash.

Bounded: lines wait for the sender thread in a queue of at most ``max_lines`` lines and
``max_bytes`` bytes of text; past that they are dropped and counted (``queue_full``). A line
python-logstash could not send (Logstash away: its handler drops it and tries to connect again
after a back-off, or slow: its socket's one-second timeout) is counted too (``unsent``).

Fields (docs/insight.md, "Job output in ELK"): ECS's ``@timestamp`` (the time the executor read the
line), ``message`` (the line, a gang's ``[rank N]`` prefix taken off), ``event.dataset``
(``trainyard.job_output``), ``event.id`` (``<job>:<attempt>:<chunk seq>:<line>``, stable across a
redelivery: the pipeline makes it the document id), ``ecs.version``, and Trainyard's own namespace
(ECS's rule for custom fields): ``trainyard.job.{id, attempt, rank, queue}`` and
``trainyard.log.stream`` (``stdout``, ``stderr`` or ``system``: the executor's own lines about the
attempt, which have no rank).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter

from trainyard_contracts import LogChunk, LogLine

TAG = "trainyard-job-output"
"""The tag the Logstash pipeline routes these by (deploy/logstash/pipeline/trainyard.conf)."""
DATASET = "trainyard.job_output"
ECS_VERSION = "8.11.0"
_RANK_PREFIX = re.compile(r"\[rank (\d{1,6})\] ")  # what the executor puts before a gang's lines


@dataclass(frozen=True)
class JobOutputLimits:
    max_lines: int = 10_000
    max_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class JobContext:
    """What telemetry knows of the job a chunk belongs to."""

    queue: str | None = None
    gang: bool = False
    """Several ranks: the executor put ``[rank N] `` before each output line."""


def line_fields(chunk: LogChunk, index: int, line: LogLine, job: JobContext) -> tuple[str, dict[str, object]]:
    """(message, the ECS fields beside it) of the chunk's ``index``-th line. Pure."""
    text, rank = line.text, chunk.replica
    if job.gang and line.stream != "system" and (m := _RANK_PREFIX.match(text)):
        text, rank = text[m.end() :], int(m.group(1))
    job_fields: dict[str, object] = {"id": chunk.job_id, "attempt": chunk.attempt}
    if line.stream != "system":
        job_fields["rank"] = rank
    if job.queue:
        job_fields["queue"] = job.queue
    return text, {
        "ecs": {"version": ECS_VERSION},
        "event": {
            "dataset": DATASET,
            "kind": "event",
            "id": f"{chunk.job_id}:{chunk.attempt}:{chunk.seq}:{index}",
        },
        "trainyard": {"job": job_fields, "log": {"stream": line.stream}},
    }


def line_record(chunk: LogChunk, index: int, line: LogLine, job: JobContext) -> logging.LogRecord:
    """The line as the log record python-logstash formats: its time, its text, and the fields
    as the record's extras (python-logstash sends dicts as JSON objects)."""
    text, fields = line_fields(chunk, index, line, job)
    record = logging.makeLogRecord(
        {"name": "trainyard.job", "levelname": "INFO", "levelno": logging.INFO, "msg": text, **fields}
    )
    record.created = line.time.timestamp()
    return record


class _Handler(Protocol):
    """What the sender needs of python-logstash's TCPLogstashHandler (a SocketHandler): ``sock``
    is None when it has no connection."""

    def emit(self, record: logging.LogRecord) -> None: ...

    def close(self) -> None: ...


class JobOutputShipper:
    """Lines in (``offer``, from the event loop: never blocks, never raises), one sender thread
    out through python-logstash's TCP handler."""

    def __init__(
        self,
        make_handler: Callable[[], _Handler],
        registry: CollectorRegistry | None = None,
        limits: JobOutputLimits | None = None,
    ) -> None:
        self.limits = limits or JobOutputLimits()
        self._make_handler = make_handler
        self._queue: deque[tuple[logging.LogRecord, int]] = deque()
        self._bytes = 0
        self._ready = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.shipped = 0
        self.dropped = {"queue_full": 0, "unsent": 0}
        self._shipped_total = Counter(
            "trainyard_job_output_lines_shipped",
            "job output lines handed to Logstash",
            registry=registry,
        )
        self._dropped_total = Counter(
            "trainyard_job_output_lines_dropped",
            "job output lines not shipped to Logstash: queue_full (Logstash slower than the jobs), "
            "unsent (Logstash away or too slow to take a line)",
            ["reason"],
            registry=registry,
        )

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._send_all, name="job-output-to-logstash", daemon=True)
            self._thread.start()

    def offer(self, chunk: LogChunk, job: JobContext) -> None:
        for index, line in enumerate(chunk.lines):
            size = len(line.text)
            with self._ready:
                if len(self._queue) >= self.limits.max_lines or self._bytes + size > self.limits.max_bytes:
                    self._drop("queue_full")
                    continue
            record = line_record(chunk, index, line, job)
            with self._ready:
                self._queue.append((record, size))
                self._bytes += size
                self._ready.notify()

    def pending(self) -> int:
        with self._ready:
            return len(self._queue)

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued (for at most ``timeout`` seconds), then close the connection."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1
        self._dropped_total.labels(reason).inc()

    def _send_all(self) -> None:
        handler = self._make_handler()
        try:
            while True:
                with self._ready:
                    while not self._queue and not self._closing:
                        self._ready.wait()
                    if not self._queue:
                        return
                    record, size = self._queue.popleft()
                    self._bytes -= size
                # SocketHandler.emit: connects when it has no socket (a failed connect waits a
                # growing back-off before the next try) and drops the line if it cannot send
                handler.emit(record)
                if getattr(handler, "sock", None) is None:
                    self._drop("unsent")
                else:
                    self.shipped += 1
                    self._shipped_total.inc()
        finally:
            handler.close()


def logstash_handler(host: str, port: int) -> _Handler:
    import logstash  # python-logstash

    handler: _Handler = logstash.TCPLogstashHandler(host, port, version=1, tags=[TAG])
    return handler
