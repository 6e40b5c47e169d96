"""An in-memory view of every job record, kept current by watching the jobs KV bucket.

Services read from the view and write with compare-and-set through :class:`JobStore`; a stale view
only costs a failed CAS and a retry, never a wrong write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import ValidationError

from trainyard_contracts import JobRecord
from trainyard_shared.kvwatch import KvWatch

log = logging.getLogger("trainyard.jobview")

Listener = Callable[[JobRecord | None, JobRecord], None]


class JobView:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.records: dict[str, JobRecord] = {}
        # the jobs not yet terminal: what planning and reconciling look at, so a pass costs the
        # live jobs, not every job the installation ever ran
        self.live: dict[str, JobRecord] = {}
        self.revisions: dict[str, int] = {}
        self._listeners: list[Listener] = []
        self._watch = KvWatch(kv, self._on_entry, "jobview")
        self.ready = self._watch.ready

    def on_change(self, listener: Listener) -> None:
        """``listener(before, after)`` runs for every record update (before is None when new)."""
        self._listeners.append(listener)

    async def start(self, timeout: float = 30.0) -> None:
        await self._watch.start(timeout)

    async def stop(self) -> None:
        await self._watch.stop()

    def _on_entry(self, entry: KeyValue.Entry) -> None:
        key = entry.key
        if entry.operation in (KV_DEL, KV_PURGE):
            self.records.pop(key, None)
            self.live.pop(key, None)
            self.revisions.pop(key, None)
            return
        revision = entry.revision or 0
        if revision <= self.revisions.get(key, 0):
            return
        try:
            record = JobRecord.model_validate_json(entry.value or b"")
        except ValidationError as exc:
            log.error("unreadable job record", extra={"job_id": key, "error": str(exc)[:500]})
            return
        self.apply(record, revision)

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
        else:
            self.live[key] = record
        self.revisions[key] = revision
        for listener in self._listeners:
            try:
                listener(before, record)
            except Exception:
                log.exception("job view listener failed")

    def get(self, job_id: str) -> JobRecord | None:
        return self.records.get(job_id)

    def all(self) -> list[JobRecord]:
        return list(self.records.values())

    def unfinished(self) -> list[JobRecord]:
        """The records not in a terminal state."""
        return list(self.live.values())
