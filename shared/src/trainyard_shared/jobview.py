"""An in-memory view of every job record, kept current by watching the jobs KV bucket.

Services read from the view and write with compare-and-set through :class:`JobStore`; a stale view
only costs a failed CAS and a retry, never a wrong write.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import BaseModel, ConfigDict, ValidationError

from trainyard_contracts import JobRecord, JobState
from trainyard_shared.kvwatch import KvWatch
from trainyard_shared.liveread import LiveRead

log = logging.getLogger("trainyard.jobview")

Listener = Callable[[JobRecord | None, JobRecord], None]


class _Peek(BaseModel):
    model_config = ConfigDict(extra="ignore")


class AttemptPeek(_Peek):
    executor_id: str | None = None
    stopping: bool = False


class RecordPeek(_Peek):
    """What :class:`JobView` reads of a record before the rest: its state and its attempts'
    executor and stopping mark. ~10x cheaper than reading the whole record (7 against 80 us a
    record): most of a long-lived bucket is finished jobs a view drops at once."""

    state: JobState
    attempts: list[AttemptPeek] = []


class JobView:
    """``keep_finished``: how many finished (terminal) records stay in memory, the most recently
    finished ones; None keeps every record. A long-lived installation's bucket holds every job it
    ever ran, and a view that kept them all grew without bound (~6 KB per record). A finished job
    dropped from memory keeps its revision (so a late, older entry of it is still ignored), and
    :meth:`get` answers None for it: callers that need it read the bucket.

    ``read_finished``: a view that keeps no finished record (``keep_finished=0``) reads a finished
    one only if this says yes on its :class:`RecordPeek`; the others keep just their revision and
    no listener sees them (None reads every record). A start-up read of the live jobs so costs the
    live jobs, not the history.

    With ``keep_finished`` above 0, the first read of the bucket (``start``) peeks at a finished
    record it has not seen and holds only its bytes, the ``keep_finished`` latest of them; those
    are read in full when the read ends. A long history's older finished records are so never read
    in full (a restart with 100,000 records read every one, ~150 us each), and reach no listener:
    they are dropped as they would have been at once."""

    def __init__(
        self,
        kv: KeyValue,
        keep_finished: int | None = None,
        read_finished: Callable[[RecordPeek], bool] | None = None,
    ) -> None:
        self.kv = kv
        self.records: dict[str, JobRecord] = {}
        # the jobs not yet terminal: what planning and reconciling look at, so a pass costs the
        # live jobs, not every job the installation ever ran
        self.live: dict[str, JobRecord] = {}
        self.revisions: dict[str, int] = {}
        self.keep_finished = keep_finished
        self.read_finished = read_finished if keep_finished == 0 else None
        self._finished: OrderedDict[str, None] = OrderedDict()  # in the order they finished
        # during the first read: finished records not yet read in full (bytes, revision)
        self._held: OrderedDict[str, tuple[bytes, int]] | None = None
        self._listeners: list[Listener] = []
        self._watch = KvWatch(kv, self._on_entry, "jobview", before_ready=self._end_first_read)
        self.ready = self._watch.ready

    def on_change(self, listener: Listener) -> None:
        """``listener(before, after)`` runs for every record update (before is None when new)."""
        self._listeners.append(listener)

    @property
    def newest_revision(self) -> int:
        """The newest bucket revision the watch has handed over (a delete too)."""
        return self._watch.newest_revision

    async def start(self, timeout: float = 30.0, live: LiveRead | None = None) -> None:
        """Read the bucket, then follow it. ``live``: the live jobs read from the jobs index
        (liveread.py) are the start instead, and the watch follows from where the bucket stood
        before them; no finished record is read (a restart costs the live jobs, not the history)."""
        if live is not None:
            for entry in live.entries:
                self._on_entry(entry)
            await self._watch.start_after(live.last_seq)
            return
        if self.keep_finished:
            self._held = OrderedDict()
        await self._watch.start(timeout)

    async def stop(self) -> None:
        await self._watch.stop()

    def _on_entry(self, entry: KeyValue.Entry) -> None:
        key = entry.key
        if entry.operation in (KV_DEL, KV_PURGE):
            self.records.pop(key, None)
            self.live.pop(key, None)
            self.revisions.pop(key, None)
            self._finished.pop(key, None)
            return
        revision = entry.revision or 0
        if revision <= self.revisions.get(key, 0):
            return
        raw = entry.value or b""
        held = self._held
        if held is not None:
            held.pop(key, None)
        try:
            if self.read_finished is not None or (held is not None and key not in self.records):
                peek = RecordPeek.model_validate_json(raw)
                if peek.state.terminal and held is not None:
                    self._hold(held, key, raw, revision)
                    return
                if peek.state.terminal and self.read_finished is not None and not self.read_finished(peek):
                    self._pass_over(key, revision)
                    return
            record = JobRecord.model_validate_json(raw)
        except ValidationError as exc:
            log.error("unreadable job record", extra={"job_id": key, "error": str(exc)[:500]})
            return
        self.apply(record, revision)

    def _hold(self, held: OrderedDict[str, tuple[bytes, int]], key: str, raw: bytes, revision: int) -> None:
        held[key] = (raw, revision)
        assert self.keep_finished is not None
        while len(held) > self.keep_finished:
            oldest, (_, its_revision) = held.popitem(last=False)
            self._pass_over(oldest, its_revision)

    def _end_first_read(self) -> None:
        """The finished records the first read held, the latest ``keep_finished``: read now."""
        held, self._held = self._held, None
        for key, (raw, revision) in (held or {}).items():
            try:
                record = JobRecord.model_validate_json(raw)
            except ValidationError as exc:
                log.error("unreadable job record", extra={"job_id": key, "error": str(exc)[:500]})
                continue
            self.apply(record, revision)

    def _pass_over(self, key: str, revision: int) -> None:
        """A finished record not read: only its revision stays (as for one dropped)."""
        self.records.pop(key, None)
        self.live.pop(key, None)
        self._finished.pop(key, None)
        self.revisions[key] = revision

    def apply(self, record: JobRecord, revision: int) -> None:
        """Take a record at ``revision`` unless the view already holds a newer one.

        Also fed by this process's own writes (``JobStore.on_written``), so a decision made a
        moment ago is never planned again on a stale view.
        """
        key = record.job_id
        if revision <= self.revisions.get(key, 0):
            return
        before = self.records.get(key)
        self.records[key] = record
        if record.state.terminal:
            self.live.pop(key, None)
            if self.keep_finished is not None:
                self._finished[key] = None
                self._finished.move_to_end(key)
                while len(self._finished) > self.keep_finished:
                    oldest, _ = self._finished.popitem(last=False)
                    self.records.pop(oldest, None)
        else:
            self.live[key] = record
            self._finished.pop(key, None)
        self.revisions[key] = revision
        for listener in self._listeners:
            try:
                listener(before, record)
            except Exception:
                log.exception("job view listener failed")

    def get(self, job_id: str) -> JobRecord | None:
        return self.records.get(job_id)

    def all(self) -> list[JobRecord]:
        """Every record in memory (with ``keep_finished``, not the finished ones dropped)."""
        return list(self.records.values())

    def unfinished(self) -> list[JobRecord]:
        """The records not in a terminal state."""
        return list(self.live.values())
