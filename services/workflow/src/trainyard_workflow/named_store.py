"""Named records in a KV bucket, one key per name (schedules, triggers): every change is a
compare-and-set on the revision read, read again on a conflict."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue
from pydantic import BaseModel

R = TypeVar("R", bound=BaseModel)
T = TypeVar("T")


class RecordNotFound(LookupError):
    pass


class RecordExists(ValueError):
    pass


class RecordConflict(RuntimeError):
    """The record kept changing under us."""


async def listed_keys(kv: KeyValue, tries: int = 5) -> list[str]:
    """The bucket's keys. nats-py's keys() can answer "no keys" for a bucket that holds some (its
    watcher may see no pending message right after a value is stored: a listing was once empty in
    CI right after a run was stored); "none" is believed only when the bucket also says it holds
    nothing but delete markers, or after a few tries."""
    for attempt in range(tries):
        try:
            # a key changed while it is listed may be listed twice
            return sorted(set(await kv.keys()))
        except NoKeysError:
            if attempt + 1 < tries and (await kv.status()).values > 0:
                await asyncio.sleep(0.05)
                continue
            return []
    return []


class NamedStore(Generic[R]):
    """``model`` records under ``name_of(record)``; at most ``limit`` of them."""

    def __init__(
        self, kv: KeyValue, model: type[R], name_of: Callable[[R], str], kind: str, limit: int
    ) -> None:
        self.kv, self.model, self.name_of, self.kind, self.limit = kv, model, name_of, kind, limit

    async def create(self, record: R) -> None:
        if len(await self.names()) >= self.limit:
            raise ValueError(f"there are {self.limit} {self.kind}s already: delete one first")
        try:
            await self.kv.create(self.name_of(record), record.model_dump_json().encode())
        except KeyWrongLastSequenceError:
            raise RecordExists(self.name_of(record)) from None

    async def get(self, name: str) -> tuple[R, int] | None:
        try:
            entry = await self.kv.get(name)
        except KeyNotFoundError:  # absent or deleted
            return None
        if not entry.value:
            return None
        return self.model.model_validate_json(entry.value), int(entry.revision or 0)

    async def mutate(self, name: str, change: Callable[[R], tuple[R, T]], tries: int = 20) -> tuple[R, T]:
        """Apply a pure ``change`` by compare-and-set; an unchanged record is not written."""
        for _ in range(tries):
            found = await self.get(name)
            if found is None:
                raise RecordNotFound(name)
            record, revision = found
            changed, result = change(record)
            if changed == record:
                return record, result
            try:
                await self.kv.update(name, changed.model_dump_json().encode(), last=revision)
            except KeyWrongLastSequenceError:
                continue
            return changed, result
        raise RecordConflict(f"{self.kind} {name} changed under {tries} compare-and-sets in a row")

    async def delete(self, name: str) -> None:
        if await self.get(name) is None:
            raise RecordNotFound(name)
        await self.kv.delete(name)

    async def names(self) -> list[str]:
        return await listed_keys(self.kv)

    async def listed(self, limit: int = 100) -> list[R]:
        out: list[R] = []
        for name in await self.names():
            if len(out) >= min(limit, self.limit):
                break
            found = await self.get(name)
            if found is not None:
                out.append(found[0])
        return out
