"""The job records in KV: create-once and compare-and-set updates."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from trainyard_contracts import JobRecord

Change = Callable[[JobRecord], JobRecord | None]


class RecordIndex(Protocol):
    """Told of each record whose queue or state changes (trainyard_shared.jobindex.JobIndex)."""

    async def enter(self, record: JobRecord) -> int: ...

    async def arrive(self, record: JobRecord) -> None: ...

    async def leave(self, before: JobRecord, entered_seq: int) -> None: ...


def _moves(before: JobRecord, after: JobRecord) -> bool:
    return before.state != after.state or before.spec.queue != after.spec.queue


class RecordExists(Exception):
    pass


class CasConflict(Exception):
    """The record kept changing under us; the caller's message will be redelivered."""


class JobStore:
    """``remember``: how many records this store keeps from its own reads and writes, to try the
    next compare-and-set of the same job on them instead of reading the bucket first (an executor
    writes running, then the outcome: the second write needs no read). Like a view read through
    (:meth:`read_through`), a remembered record that is out of date costs one failed CAS, never a
    wrong write.

    ``index``: the jobs index the writes keep current (an entry for the new queue and state before
    each compare-and-set that changes them, the old one removed after: jobindex.py).
    """

    def __init__(self, kv: KeyValue, remember: int = 4096, index: RecordIndex | None = None) -> None:
        self.kv = kv
        self.index = index
        self._written: list[Callable[[JobRecord, int], None]] = []
        self._view: Any = None
        self._remember = remember
        self._memory: OrderedDict[str, tuple[JobRecord, int]] = OrderedDict()

    def on_written(self, callback: Callable[[JobRecord, int], None]) -> None:
        """Tell ``callback(record, revision)`` about every successful write (a view stays current)."""
        self._written.append(callback)

    def _keep(self, record: JobRecord, revision: int) -> None:
        if self._remember <= 0:
            return
        memory = self._memory
        memory[record.job_id] = (record, revision)
        memory.move_to_end(record.job_id)
        if len(memory) > self._remember:
            memory.popitem(last=False)

    def remember(self, record: JobRecord, revision: int) -> None:
        """A copy of the record known from elsewhere (the scheduler's start command carries it):
        the next compare-and-set tries it first. An older copy than the one remembered is ignored."""
        known = self._memory.get(record.job_id)
        if known is None or known[1] < revision:
            self._keep(record, revision)

    def remembered(self, job_id: str) -> tuple[JobRecord, int] | None:
        """The record and revision this store last read or wrote, if it still remembers them."""
        return self._memory.get(job_id)

    def _notify(self, record: JobRecord, revision: int) -> None:
        self._keep(record, revision)
        for callback in self._written:
            callback(record, revision)

    async def create(self, record: JobRecord) -> int:
        if self.index is not None:  # first: a record always has its entries (its state's, its arrival)
            await asyncio.gather(self.index.enter(record), self.index.arrive(record))
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
        record, revision = JobRecord.model_validate_json(entry.value), entry.revision or 0
        self._keep(record, revision)
        return record, revision

    def read_through(self, view: Any) -> None:
        """Try each compare-and-set first on the record ``view`` holds (a :class:`JobView`).

        Saves the read before every write: a view that is behind costs one failed CAS, after
        which the record is read from the bucket as usual. The answer is the same either way.
        """
        self._view = view

    def known(self, job_id: str) -> tuple[JobRecord, int] | None:
        """The copy of a record this process trusts first, and its revision: the view's (see
        :meth:`read_through`) unless this store read or wrote a newer one. The one rule for every
        cached record: it is tried by compare-and-set, and a stale one costs one failed CAS."""
        remembered = self._memory.get(job_id)
        if self._view is not None:
            record = self._view.records.get(job_id)
            revision = self._view.revisions.get(job_id)
            if record is not None and revision and (remembered is None or revision >= remembered[1]):
                return record, revision
        return remembered

    async def update(
        self, job_id: str, change: Change, *, tries: int = 20
    ) -> tuple[JobRecord, JobRecord] | None:
        """Apply a pure ``change`` by compare-and-set, re-reading on conflict.

        Returns (before, after), or None when the record is missing or ``change`` said no (None).
        A "no" from ``change`` on a cached record is checked against the bucket before it stands.
        """
        cached = self.known(job_id)
        for _ in range(tries):
            from_cache = cached is not None
            current = cached if cached is not None else await self.get(job_id)
            cached = None
            if current is None:
                return None
            before, revision = current
            after = change(before)
            if after is None:
                if from_cache:  # the view may be behind: the stored record decides
                    fresh = await self.get(job_id)
                    if fresh is not None and fresh[1] != revision:
                        cached = fresh
                        continue
                return None
            entered = None
            if self.index is not None and _moves(before, after):
                entered = await self.index.enter(after)  # first: a record always has its entry
                if before.spec.queue != after.spec.queue:  # (no service moves a job today)
                    await self.index.arrive(after)
            try:
                new_revision = await self.kv.update(job_id, after.model_dump_json().encode(), last=revision)
            except KeyWrongLastSequenceError:
                continue  # the entry just written is stale unless the job gets there: readers skip it
            self._notify(after, new_revision)
            if entered is not None and self.index is not None:
                await self.index.leave(before, entered)
            return before, after
        raise CasConflict(f"job {job_id}: record changed {tries} times while updating")
