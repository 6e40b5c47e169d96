"""Purging a finished job: its record and the record's history, its secrets, its logs and its
idempotency entry. What was removed is answered and audit-logged (names and counts, never values)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from trainyard_contracts import JobRecord, Subjects
from trainyard_shared.jobsecrets import SecretStore

log = logging.getLogger("trainyard.submission.audit")


class JobNotFinished(RuntimeError):
    pass


@dataclass(frozen=True)
class Purged:
    job_id: str
    record_revisions: int
    secrets: bool
    log_chunks: int
    idempotency_entry: bool

    def as_json(self) -> dict[str, object]:
        return {"purged": asdict(self)}


@dataclass
class JobPurger:
    jobs: KeyValue
    secrets: SecretStore
    idempotency: KeyValue
    js: JetStreamContext
    subjects: Subjects

    async def purge(self, record: JobRecord, by: str | None) -> Purged:
        """Raises JobNotFinished for a job that has not ended (cancel it first)."""
        job_id = record.job_id
        if not record.state.terminal:
            raise JobNotFinished(f"job {job_id} is {record.state.value}: only a finished job is purged")
        revisions = len(await self.jobs.history(job_id))
        secrets = await self.secrets.forget(job_id)
        chunks = await self._purge_logs(job_id)
        slot = await self._purge_idempotency(record)
        await self.jobs.purge(job_id)  # last: a purge that failed half way can be asked again
        # its entries in the jobs index after the record (a reader skips an entry without one):
        # its state's, its arrival entry, a late arrival entry (jobindex.py)
        index_of = f"{self.subjects.prefix}.jobidx"
        for subject in (
            f"{index_of}.*.*.{job_id}",
            f"{index_of}.*.{job_id}",
            f"{index_of}.late.*.{job_id}.arrival",
        ):
            await self.js.purge_stream(self.subjects.streams.jobindex, subject=subject)
        purged = Purged(job_id, revisions, secrets, chunks, slot)
        log.info("job purged", extra={"job_id": job_id, "by": by, **asdict(purged)})
        return purged

    async def _purge_logs(self, job_id: str) -> int:
        stream = self.subjects.streams.logs
        subject = f"{self.subjects.prefix}.log.{job_id}.>"
        # the count first (the purge answers only whether it worked); a chunk stored between the
        # two is purged and not counted
        info = await self.js.stream_info(stream, subjects_filter=subject)
        chunks = sum((info.state.subjects or {}).values())
        if chunks:
            await self.js.purge_stream(stream, subject=subject)
        return chunks

    async def _purge_idempotency(self, record: JobRecord) -> bool:
        slot = record.idempotency_slot
        if slot is None:
            return False
        try:
            entry = await self.idempotency.get(slot)
        except KeyNotFoundError:
            return False
        if (entry.value or b"").decode() != record.job_id:  # the key names another job now
            return False
        await self.idempotency.purge(slot)
        return True
