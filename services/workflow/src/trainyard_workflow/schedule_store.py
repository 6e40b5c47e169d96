"""Schedules in their KV bucket (``<prefix>_schedules``, one key per name): every change is a
compare-and-set on the revision read, read again on a conflict."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from trainyard_contracts.schedules import ScheduleRecord

T = TypeVar("T")
MAX_SCHEDULES = 1000


class ScheduleNotFound(LookupError):
    pass


class ScheduleExists(ValueError):
    pass


class ScheduleConflict(RuntimeError):
    """The schedule kept changing under us."""


class ScheduleStore:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def create(self, record: ScheduleRecord) -> None:
        if len(await self.names()) >= MAX_SCHEDULES:
            raise ValueError(f"there are {MAX_SCHEDULES} schedules already: delete one first")
        try:
            await self.kv.create(record.spec.name, record.model_dump_json().encode())
        except KeyWrongLastSequenceError:
            raise ScheduleExists(record.spec.name) from None

    async def get(self, name: str) -> tuple[ScheduleRecord, int] | None:
        try:
            entry = await self.kv.get(name)
        except KeyNotFoundError:  # absent or deleted
            return None
        if not entry.value:
            return None
        return ScheduleRecord.model_validate_json(entry.value), int(entry.revision or 0)

    async def mutate(
        self, name: str, change: Callable[[ScheduleRecord], tuple[ScheduleRecord, T]], tries: int = 20
    ) -> tuple[ScheduleRecord, T]:
        """Apply a pure ``change`` by compare-and-set; an unchanged record is not written."""
        for _ in range(tries):
            found = await self.get(name)
            if found is None:
                raise ScheduleNotFound(name)
            record, revision = found
            changed, result = change(record)
            if changed == record:
                return record, result
            try:
                await self.kv.update(name, changed.model_dump_json().encode(), last=revision)
            except KeyWrongLastSequenceError:
                continue
            return changed, result
        raise ScheduleConflict(f"schedule {name} changed under {tries} compare-and-sets in a row")

    async def delete(self, name: str) -> None:
        if await self.get(name) is None:
            raise ScheduleNotFound(name)
        await self.kv.delete(name)

    async def names(self) -> list[str]:
        try:
            return sorted(await self.kv.keys())
        except NoKeysError:
            return []

    async def listed(self, limit: int = 100) -> list[ScheduleRecord]:
        out: list[ScheduleRecord] = []
        for name in await self.names():
            if len(out) >= min(limit, MAX_SCHEDULES):
                break
            found = await self.get(name)
            if found is not None:
                out.append(found[0])
        return out
