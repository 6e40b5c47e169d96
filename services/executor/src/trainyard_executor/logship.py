"""Job output to the logs stream, in chunks: one message per batch of lines, not per line."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

from faststream.nats import NatsBroker

from trainyard_contracts import LogChunk, LogLine, Subjects
from trainyard_contracts._time import utcnow
from trainyard_shared.events import MSG_ID, publish_acked

MAX_LINE = 64 * 1024


class LogShipper:
    def __init__(
        self,
        broker: NatsBroker,
        subjects: Subjects,
        job_id: str,
        attempt: int,
        flush_seconds: float,
        batch_lines: int,
    ) -> None:
        self.broker = broker
        self.subject = subjects.log(job_id, attempt)
        self.stream = subjects.streams.logs
        self.job_id = job_id
        self.attempt = attempt
        self.flush_seconds = flush_seconds
        self.batch_lines = batch_lines
        self.seq = 0
        self.lines = 0
        self._buffer: list[LogLine] = []
        self._lock = asyncio.Lock()
        # a timer, not a task per attempt: most attempts (short ones) end before it fires
        self._timer: asyncio.TimerHandle | None = None
        self._timed_flush: asyncio.Future[None] | None = None
        self._unsent: LogChunk | None = None  # a chunk whose publish failed: sent again as is

    async def line(self, stream: str, text: str) -> None:
        kind: Literal["stdout", "stderr", "system"] = (
            stream if stream in ("stdout", "stderr") else "system"  # type: ignore[assignment]
        )
        self._buffer.append(LogLine(stream=kind, text=text[:MAX_LINE], time=utcnow()))
        self.lines += 1
        if len(self._buffer) >= self.batch_lines:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_seconds, self._flush_due)

    async def system(self, text: str) -> None:
        await self.line("system", text)

    def _flush_due(self) -> None:
        self._timer = None
        self._timed_flush = asyncio.ensure_future(self._flush_in_background())

    async def _flush_in_background(self) -> None:
        # a failed publish keeps its chunk (flush), so the next flush or close() sends it again
        with contextlib.suppress(Exception):
            await self.flush()

    async def flush(self) -> None:
        """Publish what is buffered, in chunks under stable message ids. A chunk whose publish
        failed stays and is published again, as the same chunk, by the next flush: a retry after
        a lost ack is dropped by the stream, never stored twice or with lines missing."""
        async with self._lock:
            while self._unsent is not None or self._buffer:
                if self._unsent is None:
                    lines, self._buffer = self._buffer, []
                    self._unsent = LogChunk(
                        job_id=self.job_id, attempt=self.attempt, seq=self.seq, lines=lines
                    )
                    self.seq += 1
                chunk = self._unsent
                await publish_acked(
                    self.broker,
                    self.subject,
                    chunk.model_dump_json().encode(),
                    {MSG_ID: f"{self.job_id}:{self.attempt}:log:{chunk.seq}"},
                    self.stream,
                )
                self._unsent = None

    async def close(self) -> None:
        """Everything buffered published (raises if the broker does not take it; call again)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._timed_flush is not None and not self._timed_flush.done():
            await asyncio.wait({self._timed_flush})  # its lines are on their way: let it finish
        await self.flush()
