"""A local attempt's output: its ranks' stdout and stderr files followed from the offsets already
shipped, line by line, and what is left delivered after the ranks are gone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import BinaryIO

from ..lines import READ_CHUNK, LineSplitter
from .ranks import Rank

_TAIL_POLL_S = 0.05
"""How often a log file that has reached its end is looked at again (regular files never block)."""
_DRAIN_TIMEOUT_S = 5.0
"""After the ranks are gone, how long a tail may go without delivering anything before what is
left in its file is given up."""
_DRAIN_MOST_S = 120.0

Emit = Callable[[str, str], Awaitable[None]]


async def follow_output(
    rank: Rank, stream: str, finished: asyncio.Event, offsets: dict[str, int], emit: Emit, tagged: bool
) -> None:
    """Follow one of a rank's output files from the shipped offset (``offsets``, by file name, kept
    current here) to its end; ``tagged``: each line says its rank (a gang)."""
    path = rank.stdout if stream == "stdout" else rank.stderr
    key = path.name
    prefix = f"[rank {rank.rank}] "

    async def deliver(name: str, line: str) -> None:
        await emit(name, prefix + line if tagged else line)

    splitter = LineSplitter(stream, deliver)
    offset = offsets.get(key, 0)
    f: BinaryIO | None = None
    try:
        while True:
            final = finished.is_set()  # read first: what was written before the end is read below
            if f is None:
                try:
                    f = open(path, "rb")  # noqa: ASYNC230 - a local file, kept open while tailing
                    f.seek(offset)
                except FileNotFoundError:
                    if final:
                        break
                    await _nap(finished)
                    continue
            chunk = f.read(READ_CHUNK)
            if chunk:
                offset += len(chunk)
                await splitter.feed(chunk)
                offsets[key] = offset - splitter.pending
                continue
            if final:
                break
            await _nap(finished)
        await splitter.end()
        offsets[key] = offset
    finally:
        if f is not None:
            f.close()


async def drain(tails: list[asyncio.Task[None]], offsets: dict[str, int]) -> None:
    """Let the tails deliver what is left in the files, as long as they make progress: a large
    output shipped under load takes longer than one fixed timeout, and its last lines must not be
    cut off; tails that moved nothing for ``_DRAIN_TIMEOUT_S`` are cancelled, and all of them after
    ``_DRAIN_MOST_S`` (a process that escaped the stop may write on)."""
    pending: set[asyncio.Task[None]] = set(tails)
    deadline = asyncio.get_running_loop().time() + _DRAIN_MOST_S
    while pending and asyncio.get_running_loop().time() < deadline:
        before = dict(offsets)
        _, pending = await asyncio.wait(pending, timeout=_DRAIN_TIMEOUT_S)
        if pending and offsets == before:
            break
    for task in pending:
        task.cancel()


async def _nap(finished: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(finished.wait(), _TAIL_POLL_S)
