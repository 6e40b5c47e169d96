"""The executors bucket: each executor's heartbeat is its lease."""

from __future__ import annotations

from datetime import datetime

from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from trainyard_contracts import ExecutorHeartbeat


class ExecutorDirectory:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def put(self, heartbeat: ExecutorHeartbeat) -> None:
        await self.kv.put(heartbeat.executor_id, heartbeat.model_dump_json().encode())

    async def remove(self, executor_id: str) -> None:
        await self.kv.delete(executor_id)

    async def all(self) -> list[ExecutorHeartbeat]:
        try:
            keys = await self.kv.keys()
        except NoKeysError:
            return []
        beats = []
        for key in keys:
            try:
                entry = await self.kv.get(key)
                beats.append(ExecutorHeartbeat.model_validate_json(entry.value or b""))
            except (KeyNotFoundError, ValidationError):
                continue
        return beats

    async def online(self, now: datetime) -> dict[str, ExecutorHeartbeat]:
        return {b.executor_id: b for b in await self.all() if not b.expired(now)}
