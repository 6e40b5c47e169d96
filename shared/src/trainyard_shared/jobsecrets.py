"""The job secrets bucket: written at submission, read by the executor, removed when a job ends.

See ``trainyard_contracts.jobsecrets`` for why the values are not in the job record.
"""

from __future__ import annotations

import asyncio
import logging

from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from trainyard_contracts import JobRecord, JobSpec
from trainyard_contracts.jobsecrets import JobSecrets, with_secrets

log = logging.getLogger("trainyard.jobsecrets")


class SecretsMissing(RuntimeError):
    """The record says its secrets are stored, and they are not (purged, expired)."""


class SecretStore:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def put(self, job_id: str, secrets: JobSecrets) -> None:
        await self.kv.put(job_id, secrets.model_dump_json().encode())

    async def get(self, job_id: str) -> JobSecrets | None:
        try:
            entry = await self.kv.get(job_id)
        except KeyNotFoundError:
            return None
        return JobSecrets.model_validate_json(entry.value) if entry.value else None

    async def forget(self, job_id: str) -> bool:
        """Remove the job's secrets and every trace of them (a purge, not a delete marker).
        Returns whether there were any."""
        if await self.get(job_id) is None:
            return False
        try:
            await self.kv.purge(job_id)
        except (KeyNotFoundError, NotFoundError):
            return False
        return True

    async def discard(self, job_id: str) -> bool:
        """Purge the job's secrets without reading them (the scheduler may not): whether it worked.
        Logged, never raised: the bucket's TTL removes what a failed purge leaves."""
        try:
            await self.kv.purge(job_id)
        except Exception as exc:  # a background clean-up: the TTL is the backstop
            log.warning(
                "could not remove a job's secrets", extra={"job_id": job_id, "error": type(exc).__name__}
            )
            return False
        return True

    async def spec_to_run(self, record: JobRecord) -> JobSpec:
        """The record's spec with its secret values back in (a record written before the secrets
        bucket holds them itself)."""
        if not record.secrets_stored:
            return record.spec
        secrets = await self.get(record.job_id)
        if secrets is None:
            raise SecretsMissing(
                f"job {record.job_id}: its secret env and source credential are no longer stored "
                "(the job was purged, or they expired); submit it again"
            )
        return with_secrets(record.spec, secrets)

    async def values(self, record: JobRecord) -> list[str]:
        """What must not be shown of this job: its secret values wherever they are kept."""
        if not record.secrets_stored:
            return record.spec.secret_values()
        secrets = await self.get(record.job_id)
        return secrets.values() if secrets is not None else []


def just_ended_with_secrets(before: JobRecord | None, after: JobRecord) -> bool:
    """``after`` is the write that ended a job whose secrets are stored: time to remove them.
    (A record first seen already ended, when a view starts, is left to the bucket's TTL.)"""
    return after.secrets_stored and after.state.terminal and before is not None and not before.state.terminal


class ForgetWhenEnded:
    """A job view listener (``JobView.on_change``): removes a job's secrets in the background
    once its record ends. Every replica may do it: a purge is idempotent."""

    def __init__(self, secrets: SecretStore) -> None:
        self.secrets = secrets
        self.pending: set[asyncio.Task[bool]] = set()

    def __call__(self, before: JobRecord | None, after: JobRecord) -> None:
        if just_ended_with_secrets(before, after):
            task = asyncio.get_running_loop().create_task(self.secrets.discard(after.job_id))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)
