"""Output bytes to lines for a line sink: bounded memory whatever the line length, UTF-8 kept whole."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Iterable
from typing import Any

from .base import LineSink

__all__ = ["MAX_LINE", "READ_CHUNK", "LineSplitter", "drain_pumps", "pump_lines"]

MAX_LINE = 64 * 1024
"""A longer output line is delivered as several pieces of at most this many bytes."""
READ_CHUNK = 64 * 1024


def _safe_cut(data: bytes | bytearray, limit: int) -> int:
    """A cut point <= ``limit`` (``len(data) > limit``) that does not split a UTF-8 character."""
    cut = limit
    for _ in range(3):
        if data[cut] & 0xC0 != 0x80:  # not a continuation byte: a character starts here
            return cut
        cut -= 1
    return cut if data[cut] & 0xC0 != 0x80 else limit


async def _deliver(line: bytes | bytearray, name: str, on_line: LineSink) -> None:
    if line.endswith(b"\r"):
        line = line[:-1]
    while len(line) > MAX_LINE:
        cut = _safe_cut(line, MAX_LINE)
        await on_line(name, line[:cut].decode("utf-8", errors="replace"))
        line = line[cut:]
    await on_line(name, line.decode("utf-8", errors="replace"))


class LineSplitter:
    """Bytes in, lines out to ``on_line(name, line)``: UTF-8 (invalid bytes replaced), without the
    "\n" (or "\r\n"). A line longer than :data:`MAX_LINE` bytes is delivered as several pieces of
    at most MAX_LINE bytes, never splitting a character; memory stays bounded whatever the line
    length. :meth:`end` delivers a last line without a newline."""

    def __init__(self, name: str, on_line: LineSink) -> None:
        self.name = name
        self.on_line = on_line
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes fed but not delivered yet (an unfinished line)."""
        return len(self._buf)

    async def feed(self, chunk: bytes) -> None:
        buf = self._buf
        buf += chunk
        start = 0
        while (nl := buf.find(b"\n", start)) >= 0:
            await _deliver(buf[start:nl], self.name, self.on_line)
            start = nl + 1
        del buf[:start]
        while len(buf) > MAX_LINE:
            cut = _safe_cut(buf, MAX_LINE)
            await self.on_line(self.name, buf[:cut].decode("utf-8", errors="replace"))
            del buf[:cut]

    async def end(self) -> None:
        if self._buf:
            await _deliver(self._buf, self.name, self.on_line)
            self._buf = bytearray()


async def pump_lines(stream: asyncio.StreamReader, name: str, on_line: LineSink) -> None:
    """Deliver the lines of ``stream`` to ``on_line(name, line)`` as they arrive, until EOF
    (split as :class:`LineSplitter` does)."""
    splitter = LineSplitter(name, on_line)
    while True:
        try:
            chunk = await stream.read(READ_CHUNK)
        except (ConnectionError, OSError):
            break
        if not chunk:
            break
        await splitter.feed(chunk)
    await splitter.end()


async def drain_pumps(
    pumps: Collection[asyncio.Task[Any]], streams: Iterable[Any], settle_s: float, then_s: float
) -> None:
    """Let an attempt's log pumps end by themselves for ``settle_s``; then close the streams under
    the ones still running (a read under way raises and ends them) and give those ``then_s``
    more before they are cancelled."""
    if not pumps:
        return
    _, pending = await asyncio.wait(pumps, timeout=settle_s)
    if pending:
        for stream in list(streams):
            with contextlib.suppress(Exception):
                stream.close()
        await asyncio.wait(pending, timeout=then_s)
        for task in pending:
            task.cancel()
