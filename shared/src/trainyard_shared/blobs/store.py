"""Content-addressed blobs in a JetStream Object Store bucket: the object's name is its digest.

A blob is written once (a second put of the same digest is skipped: :func:`has_blob` first) and
read back only when its bytes hash to its name, so a reader never runs something else than what was
named. Buckets are declared by the provision step (``trainyard_shared.bus``), never here.
"""

from __future__ import annotations

import asyncio
import re

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from trainyard_shared.blobs.pack import digest_of

__all__ = [
    "DIGEST_PATTERN",
    "BlobMissing",
    "BlobTooLarge",
    "get_blob",
    "has_blob",
    "open_store",
    "put_blob",
]

DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
_DIGEST = re.compile(DIGEST_PATTERN)
GET_TIMEOUT_S = 120.0


class BlobMissing(LookupError):
    """No blob of that digest in the bucket (never uploaded, or expired)."""


class BlobTooLarge(ValueError):
    """The stored blob is larger than the reader accepts."""


def check_digest(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise ValueError(f"{digest[:100]!r} is not a digest: expected sha256:<64 lowercase hex digits>")
    return digest


async def open_store(js: JetStreamContext, bucket: str) -> ObjectStore:
    """Bind to a declared bucket (BlobMissing when the provision step has not made it)."""
    try:
        return await js.object_store(bucket)
    except BucketNotFoundError as exc:
        raise BlobMissing(f"object store bucket {bucket!r} does not exist (run the provision step)") from exc


async def has_blob(store: ObjectStore, digest: str) -> bool:
    try:
        info = await store.get_info(check_digest(digest))
    except (ObjectNotFoundError, NotFoundError):
        return False
    return not info.deleted


async def put_blob(store: ObjectStore, data: bytes, digest: str | None = None) -> tuple[str, bool]:
    """Store ``data`` under its digest; ``(digest, stored)``, ``stored`` False when it was there
    already. ``digest``, when given, must be the data's (ValueError otherwise)."""
    actual = digest_of(data)
    if digest is not None and check_digest(digest) != actual:
        raise ValueError(f"the data's digest is {actual}, not {digest}")
    if await has_blob(store, actual):
        return actual, False
    await store.put(actual, data)
    return actual, True


async def get_blob(store: ObjectStore, digest: str, max_bytes: int) -> bytes:
    """The blob named ``digest``, checked against it; BlobMissing, BlobTooLarge, or ValueError
    when the bytes do not hash to the name."""
    check_digest(digest)
    try:
        info = await store.get_info(digest)
    except (ObjectNotFoundError, NotFoundError) as exc:
        raise BlobMissing(f"{digest} is not stored (never uploaded, or expired)") from exc
    if (info.size or 0) > max_bytes:
        raise BlobTooLarge(f"{digest} is {info.size} bytes, more than the {max_bytes} accepted")
    async with asyncio.timeout(GET_TIMEOUT_S):  # a chunk gone missing would otherwise wait forever
        result = await store.get(digest)
    data = bytes(result.data or b"")
    if digest_of(data) != digest:
        raise ValueError(f"the stored bytes of {digest} hash to {digest_of(data)}")
    return data
