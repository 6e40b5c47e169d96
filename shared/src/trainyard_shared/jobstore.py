"""The job records in KV: create-once and compare-and-set updates."""

from __future__ import annotations

from collections.abc import Callable

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from trainyard_contracts import JobRecord

Change = Callable[[JobRecord], JobRecord | None]


class RecordExists(Exception):
    pass


class CasConflict(Exception):
    """The record kept changing under us; the caller's message will be redelivered."""


class JobStore:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self._written: list[Callable[[JobRecord, int], None]] = []

    def on_written(self, callback: Callable[[JobRecord, int], None]) -> None:
        """Tell ``callback(record, revision)`` about every successful write (a view stays current)."""
        self._written.append(callback)

    def _notify(self, record: JobRecord, revision: int) -> None:
        for callback in self._written:
            callback(record, revision)

    async def create(self, record: JobRecord) -> int:
        try:
            revision = await self.kv.create(record.job_id, record.model_dump_json().encode())
        except KeyWrongLastSequenceError as exc:
            raise RecordExists(record.job_id) from exc
        self._notify(record, revision)
        return revision

    async def get(self, job_id: str) -> tuple[JobRecord, int] | None:
        try:
            entry = await self.kv.get(job_id)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return JobRecord.model_validate_json(entry.value), entry.revision or 0

    async def update(
        self, job_id: str, change: Change, *, tries: int = 20
    ) -> tuple[JobRecord, JobRecord] | None:
        """Apply a pure ``change`` by compare-and-set, re-reading on conflict.

        Returns (before, after), or None when the record is missing or ``change`` said no (None).
        """
        for _ in range(tries):
            current = await self.get(job_id)
            if current is None:
                return None
            before, revision = current
            after = change(before)
            if after is None:
                return None
            try:
                new_revision = await self.kv.update(job_id, after.model_dump_json().encode(), last=revision)
            except KeyWrongLastSequenceError:
                continue
            self._notify(after, new_revision)
            return before, after
        raise CasConflict(f"job {job_id}: record changed {tries} times while updating")

    async def job_ids(self) -> list[str]:
        try:
            return [key for key in await self.kv.keys()]
        except Exception as exc:  # nats-py raises NoKeysError on an empty bucket
            if type(exc).__name__ == "NoKeysError":
                return []
            raise

    async def all(self) -> list[tuple[JobRecord, int]]:
        records = []
        for job_id in await self.job_ids():
            found = await self.get(job_id)
            if found is not None:
                records.append(found)
        return records
