"""The executors bucket: each executor's heartbeat is its lease."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime

from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import ValidationError

from trainyard_contracts import ExecutorHeartbeat

log = logging.getLogger("trainyard.executors")


class ExecutorDirectory:
    """``max_age``: how long one read of the bucket may be reused (0: read every time). The
    scheduler reads it fresh on every pass: an executor that just left (and handed its attempts
    back) must not be given them again from a read a moment old."""

    def __init__(self, kv: KeyValue, max_age: float = 0.0) -> None:
        self.kv = kv
        self.max_age = max_age
        self._read: tuple[float, list[ExecutorHeartbeat]] | None = None
        self._beats: dict[str, ExecutorHeartbeat] = {}
        self._watch_ready = asyncio.Event()
        self._watcher: KeyValue.KeyWatcher | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 30.0) -> None:
        """Follow the bucket with one long-lived watch: reads then cost nothing, and a heartbeat
        or a departure is seen as it is written. (The scheduler plans from it; before it calls an
        executor lost it reads the bucket itself, ``online(now, fresh=True)``, so a watch that
        fell behind can delay a placement but never requeue a healthy executor's work.)"""
        self._watcher = await self.kv.watchall()
        self._task = asyncio.create_task(self._follow(), name="executor-directory")
        await asyncio.wait_for(self._watch_ready.wait(), timeout)

    async def stop(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._watch_ready.clear()

    async def _follow(self) -> None:
        assert self._watcher is not None
        async for entry in self._watcher:
            if entry is None:
                self._watch_ready.set()
                continue
            if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                self._beats.pop(entry.key, None)
                continue
            try:
                self._beats[entry.key] = ExecutorHeartbeat.model_validate_json(entry.value)
            except ValidationError:
                log.error("unreadable executor heartbeat", extra={"executor_id": entry.key})
                self._beats.pop(entry.key, None)

    async def put(self, heartbeat: ExecutorHeartbeat) -> None:
        await self.kv.put(heartbeat.executor_id, heartbeat.model_dump_json().encode())
        self._read = None

    async def remove(self, executor_id: str) -> None:
        await self.kv.delete(executor_id)
        self._read = None

    async def all(self, fresh: bool = False) -> list[ExecutorHeartbeat]:
        """Every heartbeat: from the watch when started (unless ``fresh``), else read now."""
        if not fresh and self._watch_ready.is_set():
            return list(self._beats.values())
        if not fresh and self._read is not None and time.monotonic() - self._read[0] < self.max_age:
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

    async def online(self, now: datetime, fresh: bool = False) -> dict[str, ExecutorHeartbeat]:
        return {b.executor_id: b for b in await self.all(fresh) if not b.expired(now)}
