"""Job output to the logs stream, in chunks: one message per batch of lines, not per line.

Everything here is bounded, so one attempt's output cannot hurt the executor or other jobs:

- a chunk is at most ``chunk_bytes`` of JSON, under the server's ``max_payload`` (read from the
  connection): lines go out in as many chunks as that takes, and a line that would not fit in a
  chunk of its own is split into pieces (``logbudget.pieces``), so no chunk is ever refused for
  its size;
- an attempt's output (stdout and stderr) is capped at ``max_bytes``: past it, one marker line
  (``[trainyard: output truncated after N bytes]``) and the rest is dropped and counted; close()
  adds one line with the count. The executor's own lines (``system``) are not capped;
- while the stream does not take chunks (NATS away), lines wait in memory up to ``max_buffered``
  bytes; past that they are dropped and counted, and a line says how many once chunks are stored
  again. The failure is logged once per attempt, not once per line, and line() never raises:
  close() does (the caller tries it again while NATS is away).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Literal

from faststream.nats import NatsBroker

from trainyard_contracts import LogChunk, LogLine
from trainyard_contracts._time import utcnow
from trainyard_executor.attemptstream import AttemptStream
from trainyard_executor.logbudget import (
    LINE_OVERHEAD,
    LogLimits,
    chunk_limit,
    cut_to_fit,
    pieces,
    text_bytes,
    truncated_marker,
)

log = logging.getLogger("trainyard.executor.logs")

MAX_LINE = 64 * 1024
RETRY_MOST = 5.0  # seconds between attempts to store a chunk while the stream does not take it


class LogShipper:
    def __init__(
        self,
        to: AttemptStream,
        flush_seconds: float,
        batch_lines: int,
        limits: LogLimits | None = None,
    ) -> None:
        self.to = to  # the attempt, and its subject on the logs stream
        self.flush_seconds = flush_seconds
        self.batch_lines = batch_lines
        self.limits = limits or LogLimits()
        self.chunk_bytes = chunk_limit(self.limits.max_chunk_bytes, _max_payload(to.broker))
        self.seq = 0
        self.lines = 0
        self.output_bytes = 0  # the job's own output taken so far (stdout and stderr)
        self.dropped_lines = self.dropped_bytes = 0  # past the cap
        self._lost_lines = self._lost_bytes = 0  # past max_buffered while the stream was away
        self._truncated = False
        self._buffer: list[LogLine] = []
        self._buffered = 0  # estimated JSON bytes of _buffer
        self._batch_bytes = 0  # estimated JSON bytes of the lines since the last flush began
        self._lock = asyncio.Lock()
        # a timer, not a task per attempt: most attempts (short ones) end before it fires
        self._timer: asyncio.TimerHandle | None = None
        self._timed_flush: asyncio.Future[None] | None = None
        self._unsent: tuple[LogChunk, bytes] | None = None  # a chunk whose publish failed: sent again as is
        self._failing = False
        self._warned = False
        self._retry_in = flush_seconds
        self._counted = False  # close() added the line that counts what the cap dropped

    # -- lines in ----------------------------------------------------------------------------------

    async def line(self, stream: str, text: str) -> None:
        """Take one line of output (split when too long for a chunk). Never raises."""
        kind: Literal["stdout", "stderr", "system"] = (
            "stdout" if stream == "stdout" else "stderr" if stream == "stderr" else "system"
        )
        size = text_bytes(text)
        if kind != "system":
            if self._truncated:
                self.dropped_lines += 1
                self.dropped_bytes += size
                return
            if self.output_bytes + size > self.limits.max_bytes:
                self._truncated = True
                self.dropped_lines += 1
                self.dropped_bytes += size
                self._take("system", truncated_marker(self.limits.max_bytes))
                await self._after_take()
                return
            self.output_bytes += size
        if size + LINE_OVERHEAD > self.chunk_bytes or size > MAX_LINE:
            for piece in pieces(text, min(MAX_LINE, self.chunk_bytes - LINE_OVERHEAD)):
                self._take(kind, piece)
        else:
            self._take(kind, text, size)
        await self._after_take()

    async def system(self, text: str) -> None:
        await self.line("system", text)

    def _take(self, kind: Literal["stdout", "stderr", "system"], text: str, size: int | None = None) -> None:
        estimate = LINE_OVERHEAD + (text_bytes(text) if size is None else size)
        if kind != "system" and self._buffered + estimate > self.limits.max_buffered:
            self._lost_lines += 1  # the stream is not taking chunks: memory stays bounded
            self._lost_bytes += estimate - LINE_OVERHEAD
            return
        self._buffer.append(LogLine(stream=kind, text=text, time=utcnow()))
        self._buffered += estimate
        self._batch_bytes += estimate
        self.lines += 1

    async def _after_take(self) -> None:
        full = len(self._buffer) >= self.batch_lines or self._batch_bytes >= self.chunk_bytes
        if full and not self._failing:
            with contextlib.suppress(Exception):  # noted in flush(); the chunk stays for the next one
                await self.flush()
        if self._timer is None and (self._buffer or self._unsent):
            delay = self._retry_in if self._failing else self.flush_seconds
            self._timer = asyncio.get_running_loop().call_later(delay, self._flush_due)

    def _flush_due(self) -> None:
        self._timer = None
        self._timed_flush = asyncio.ensure_future(self._flush_in_background())

    async def _flush_in_background(self) -> None:
        # a failed publish keeps its chunk (flush), so the next flush or close() sends it again
        with contextlib.suppress(Exception):
            await self.flush()
        if self._failing and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._retry_in, self._flush_due)

    # -- chunks out --------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Publish what is buffered, in chunks under stable message ids. A chunk whose publish
        failed stays and is published again, as the same chunk, by the next flush: a retry after
        a lost ack is dropped by the stream, never stored twice or with lines missing."""
        async with self._lock:
            self._batch_bytes = 0
            while self._unsent is not None or self._buffer:
                if self._unsent is None:
                    self._unsent = self._next_chunk()
                chunk, payload = self._unsent
                try:
                    await self.to.publish(payload, f"{self.to.job_id}:{self.to.attempt}:log:{chunk.seq}")
                except Exception as exc:
                    self._note_failure(exc)
                    raise
                self._unsent = None
                self._stored_again()

    def _next_chunk(self) -> tuple[LogChunk, bytes]:
        """The next chunk from the front of the buffer: as many lines as fit in ``chunk_bytes``
        of JSON (halved until they do: escapes can make a line's JSON longer than its text)."""
        count = min(len(self._buffer), self.batch_lines)
        while True:
            lines = self._buffer[:count]
            if count == 1 and len(lines[0].text) > 1:
                lines = [cut_to_fit(lines[0], self.chunk_bytes)]
            chunk = LogChunk(job_id=self.to.job_id, attempt=self.to.attempt, seq=self.seq, lines=lines)
            payload = chunk.model_dump_json().encode()
            if len(payload) <= self.chunk_bytes or count == 1:
                break
            count = max(1, count // 2)
        taken = self._buffer[:count]
        del self._buffer[:count]
        taken_bytes = sum(LINE_OVERHEAD + text_bytes(t.text) for t in taken)
        self._buffered = max(0, self._buffered - taken_bytes) if self._buffer else 0
        self.seq += 1
        return chunk, payload

    def _note_failure(self, exc: BaseException) -> None:
        if not self._warned:  # once per attempt: a sink that keeps failing must not flood the log
            self._warned = True
            log.warning(
                "log chunks of this attempt are not being stored; holding at most %d bytes and trying again",
                self.limits.max_buffered,
                extra={
                    "job_id": self.to.job_id,
                    "attempt": self.to.attempt,
                    "error": f"{type(exc).__name__}: {exc}",
                },
            )
        self._failing = True
        self._retry_in = min(RETRY_MOST, max(self.flush_seconds, self._retry_in * 2))

    def _stored_again(self) -> None:
        self._failing = False
        self._retry_in = self.flush_seconds
        if self._lost_lines:
            lost, lost_bytes = self._lost_lines, self._lost_bytes
            self._lost_lines = self._lost_bytes = 0
            self._take(
                "system",
                f"[trainyard: {lost} lines ({lost_bytes} bytes) of output dropped: the log stream "
                "did not take them in time]",
            )

    async def close(self) -> None:
        """Everything buffered published (raises if the broker does not take it; call again)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._timed_flush is not None and not self._timed_flush.done():
            await asyncio.wait({self._timed_flush})  # its lines are on their way: let it finish
        if self.dropped_lines and not self._counted:
            self._counted = True
            self._take(
                "system",
                f"[trainyard: {self.dropped_lines} lines ({self.dropped_bytes} bytes) of output "
                f"dropped after the cap of {self.limits.max_bytes} bytes]",
            )
        await self.flush()


def _max_payload(broker: NatsBroker) -> int | None:
    try:
        return int(broker.config.connection_state.connection.max_payload)
    except Exception:  # not connected yet: the configured chunk limit alone
        return None
