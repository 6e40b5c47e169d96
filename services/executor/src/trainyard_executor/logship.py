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
        self._timer: asyncio.Task[None] | None = None

    async def line(self, stream: str, text: str) -> None:
        kind: Literal["stdout", "stderr", "system"] = (
            stream if stream in ("stdout", "stderr") else "system"  # type: ignore[assignment]
        )
        self._buffer.append(LogLine(stream=kind, text=text[:MAX_LINE], time=utcnow()))
        self.lines += 1
        if len(self._buffer) >= self.batch_lines:
            await self.flush()
        elif self._timer is None or self._timer.done():
            self._timer = asyncio.create_task(self._flush_later())

    async def system(self, text: str) -> None:
        await self.line("system", text)

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.flush_seconds)  # batching window, not synchronisation
        await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            if not self._buffer:
                return
            lines, self._buffer = self._buffer, []
            chunk = LogChunk(job_id=self.job_id, attempt=self.attempt, seq=self.seq, lines=lines)
            self.seq += 1
            await publish_acked(
                self.broker,
                self.subject,
                chunk.model_dump_json().encode(),
                {MSG_ID: f"{self.job_id}:{self.attempt}:log:{chunk.seq}"},
                self.stream,
            )

    async def close(self) -> None:
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        await self.flush()
