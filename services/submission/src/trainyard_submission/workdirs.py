"""Packed workdirs: the upload end (``HEAD`` / ``PUT /v1/workdirs/sha256:<hex>``) and the check
that a submitted spec names one that is stored.

The CLI/SDK packs the user's folder (trainyard_shared.blobs) and asks ``HEAD`` first: the same
digest is uploaded once. ``PUT`` is idempotent: the body must hash to the digest in the URL, be
within the cap and be an archive the executor will accept (every member checked, nothing written),
else 4xx saying which. A spec reaches the bus with the digest only, never a path or the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore

from trainyard_contracts.spec import FieldError, JobSpec, SpecError
from trainyard_shared.blobs import (
    UnpackLimits,
    UnsafeArchive,
    check_archive,
    digest_of,
    has_blob,
    open_store,
    put_blob,
)

__all__ = ["WorkdirRefused", "WorkdirStore"]


class WorkdirRefused(ValueError):
    """An upload that is not stored: ``status`` is the HTTP answer, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass
class WorkdirStore:
    js: JetStreamContext
    bucket: str
    limits: UnpackLimits
    _store: ObjectStore | None = None

    async def store(self) -> ObjectStore:
        if self._store is None:
            self._store = await open_store(self.js, self.bucket)
        return self._store

    async def exists(self, digest: str) -> bool:
        return await has_blob(await self.store(), digest)

    async def upload(self, digest: str, data: bytes) -> bool:
        """Store ``data`` as ``digest``; False when it was stored already. Raises WorkdirRefused."""
        if len(data) > self.limits.max_archive_bytes:
            raise WorkdirRefused(413, f"a packed workdir is at most {self.limits.max_archive_bytes} bytes")
        actual = digest_of(data)
        if actual != digest:
            raise WorkdirRefused(400, f"the body's digest is {actual}, not {digest} (the URL's)")
        store = await self.store()
        if await has_blob(store, digest):
            return False
        try:
            check_archive(data, self.limits)
        except UnsafeArchive as exc:
            raise WorkdirRefused(422, f"the packed workdir is refused: {exc}") from exc
        _, stored = await put_blob(store, data, digest)
        return stored

    async def check_spec(self, spec: JobSpec) -> None:
        """A spec's workdir must be an uploaded digest: a path means nothing on this side."""
        workdir = spec.workdir
        if workdir is None:
            return
        if workdir.digest is None:
            raise SpecError(
                [
                    FieldError(
                        field="workdir",
                        message="a local folder is packed and uploaded by the trainyard CLI or SDK; "
                        "the API takes its digest (PUT /v1/workdirs/<digest>, then workdir.digest)",
                    )
                ]
            )
        if workdir.path is not None:
            raise SpecError([FieldError(field="workdir.path", message="give the digest only, not a path")])
        if not await self.exists(workdir.digest):
            raise SpecError(
                [
                    FieldError(
                        field="workdir.digest",
                        message=f"{workdir.digest} is not uploaded (PUT /v1/workdirs/{workdir.digest} "
                        "first), or has expired",
                    )
                ]
            )
