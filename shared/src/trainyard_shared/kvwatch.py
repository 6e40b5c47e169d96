"""One long-lived watch of a KV bucket, handing every entry to a callback.

The job view, the queue configurations and the executor directory each keep an in-memory copy of a
bucket this way. ``ready`` is set once the watch has delivered what the bucket held at start.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from nats.js.kv import KeyValue


class KvWatch:
    def __init__(self, kv: KeyValue, on_entry: Callable[[Any], None], name: str) -> None:
        self.kv = kv
        self.on_entry = on_entry
        self.name = name
        self.ready = asyncio.Event()
        self._watcher: KeyValue.KeyWatcher | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 30.0) -> None:
        self._watcher = await self.kv.watchall()
        self._task = asyncio.create_task(self._run(), name=self.name)
        await asyncio.wait_for(self.ready.wait(), timeout)

    async def stop(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self.ready.clear()

    async def _run(self) -> None:
        assert self._watcher is not None
        async for entry in self._watcher:
            if entry is None:  # everything the bucket held at start has been delivered
                self.ready.set()
                continue
            self.on_entry(entry)
