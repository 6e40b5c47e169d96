"""The executors bucket: each executor's heartbeat is its lease."""

from __future__ import annotations

import time
from datetime import datetime

from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import ValidationError

from trainyard_contracts import ExecutorHeartbeat


class ExecutorDirectory:
    """``max_age``: how long one read of the bucket may be reused (0: read every time). The
    scheduler reads it fresh on every pass: an executor that just left (and handed its attempts
    back) must not be given them again from a read a moment old."""

    def __init__(self, kv: KeyValue, max_age: float = 0.0) -> None:
        self.kv = kv
        self.max_age = max_age
        self._read: tuple[float, list[ExecutorHeartbeat]] | None = None

    async def put(self, heartbeat: ExecutorHeartbeat) -> None:
        await self.kv.put(heartbeat.executor_id, heartbeat.model_dump_json().encode())
        self._read = None

    async def remove(self, executor_id: str) -> None:
        await self.kv.delete(executor_id)
        self._read = None

    async def all(self) -> list[ExecutorHeartbeat]:
        if self._read is not None and time.monotonic() - self._read[0] < self.max_age:
            return self._read[1]
        beats = await self._read_bucket()
        self._read = (time.monotonic(), beats)
        return beats

    async def _read_bucket(self) -> list[ExecutorHeartbeat]:
        """Every live heartbeat in one pass of a watch (the values come with it). Not ``keys()``
        plus a get per key: ``keys()`` is a watch too, and each left a consumer on the server for
        minutes (the limit was reached once in a long test run)."""
        watcher = await self.kv.watchall(inactive_threshold=5.0)
        beats = []
        try:
            async for entry in watcher:
                if entry is None:
                    break
                if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                    continue
                try:
                    beats.append(ExecutorHeartbeat.model_validate_json(entry.value))
                except ValidationError:
                    continue
        finally:
            await watcher.stop()
        return beats

    async def online(self, now: datetime) -> dict[str, ExecutorHeartbeat]:
        return {b.executor_id: b for b in await self.all() if not b.expired(now)}
