"""The executors bucket: each executor's heartbeat is its lease."""

from __future__ import annotations

import logging
from datetime import datetime

from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import ValidationError

from trainyard_contracts import ExecutorHeartbeat
from trainyard_shared.kvwatch import KvWatch

log = logging.getLogger("trainyard.executors")


class ExecutorDirectory:
    """Every executor's heartbeat. Read from the bucket on each call, or, once ``start`` has run,
    from a watch that follows it."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self._beats: dict[str, ExecutorHeartbeat] = {}
        self._watch = KvWatch(kv, self._on_entry, "executor-directory")

    async def start(self, timeout: float = 30.0) -> None:
        """Follow the bucket with one long-lived watch: reads then cost nothing, and a heartbeat
        or a departure is seen as it is written. (The scheduler plans from it; before it calls an
        executor lost it reads the bucket itself, ``online(now, fresh=True)``, so a watch that
        fell behind can delay a placement but never requeue a healthy executor's work.)"""
        await self._watch.start(timeout)

    async def stop(self) -> None:
        await self._watch.stop()

    def _on_entry(self, entry: KeyValue.Entry) -> None:
        if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
            self._beats.pop(entry.key, None)
            return
        try:
            self._beats[entry.key] = ExecutorHeartbeat.model_validate_json(entry.value)
        except ValidationError:
            log.error("unreadable executor heartbeat", extra={"executor_id": entry.key})
            self._beats.pop(entry.key, None)

    async def put(self, heartbeat: ExecutorHeartbeat) -> None:
        await self.kv.put(heartbeat.executor_id, heartbeat.model_dump_json().encode())

    async def remove(self, executor_id: str) -> None:
        await self.kv.delete(executor_id)

    async def all(self, fresh: bool = False) -> list[ExecutorHeartbeat]:
        """Every heartbeat: from the watch when started (unless ``fresh``), else read now."""
        if not fresh and self._watch.ready.is_set():
            return list(self._beats.values())
        return await self._read_bucket()

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
            await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py: KeyWatcher.stop is unannotated
        return beats

    async def online(self, now: datetime, fresh: bool = False) -> dict[str, ExecutorHeartbeat]:
        return {b.executor_id: b for b in await self.all(fresh) if not b.expired(now)}
