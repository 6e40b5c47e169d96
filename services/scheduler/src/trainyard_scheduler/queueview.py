"""The queue configurations, kept current by watching the ``queues`` KV bucket.

The submission service writes them (``PUT /v1/queues/{name}``, admin only); the scheduler reads
them on every planning pass, so a change applies from the next pass on. A value that does not
parse is logged and skipped: that queue then behaves as an unconfigured one (weight 1, no quota).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import ValidationError

from trainyard_contracts import QueueConfig

log = logging.getLogger("trainyard.scheduler.queues")


class QueueView:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.queues: dict[str, QueueConfig] = {}
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watcher: KeyValue.KeyWatcher | None = None

    async def start(self, timeout: float = 30.0) -> None:
        self._watcher = await self.kv.watchall()
        self._task = asyncio.create_task(self._run(), name="queueview")
        await asyncio.wait_for(self.ready.wait(), timeout)

    async def stop(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        assert self._watcher is not None
        async for entry in self._watcher:
            if entry is None:
                self.ready.set()
                continue
            if entry.operation in (KV_DEL, KV_PURGE):
                self.queues.pop(entry.key, None)
                continue
            try:
                self.queues[entry.key] = QueueConfig.model_validate_json(entry.value or b"")
            except ValidationError as exc:
                self.queues.pop(entry.key, None)
                log.error(
                    "unreadable queue configuration", extra={"queue": entry.key, "error": str(exc)[:500]}
                )

    def configs(self) -> tuple[QueueConfig, ...]:
        return tuple(self.queues.values())
