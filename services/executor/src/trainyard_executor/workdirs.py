"""The packed workdirs this executor's attempts run in, fetched from the Object Store bucket once.

Each digest is read (trainyard_shared.blobs: checked against its name) into a cache of this
executor's own (``<data>/executor/<id>/workdirs``, mode 0700), so the ranks, retries and restarts
of one job fetch it once; the cache keeps the most recently used ``keep`` archives. The backend
unpacks the cached archive into the attempt's work dir (backends/workdir.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.js.object_store import ObjectStore

from trainyard_shared.blobs import BlobMissing, BlobTooLarge, check_digest, get_blob

__all__ = ["WorkdirCache"]


class WorkdirCache:
    def __init__(
        self,
        store: Callable[[], Awaitable[ObjectStore]],
        root: Path,
        max_bytes: int,
        keep: int = 32,
        what: str = "packed workdir",
    ) -> None:
        self._store = store
        self.what = what
        self.root = root
        self.max_bytes = max_bytes
        self.keep = keep
        self._locks: dict[str, asyncio.Lock] = {}

    def path_of(self, digest: str) -> Path:
        return self.root / (check_digest(digest).removeprefix("sha256:") + ".tar.gz")

    async def fetch(self, digest: str) -> Path:
        """The archive of ``digest`` on this machine (BlobMissing: not stored, or expired)."""
        path = self.path_of(digest)
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:
            if path.exists():
                os.utime(path)
                return path
            try:
                data = await get_blob(await self._store(), digest, self.max_bytes)
            except (BlobMissing, BlobTooLarge):
                raise
            except Exception as exc:  # NATS away or refusing: say what was being fetched
                raise RuntimeError(f"could not fetch the {self.what} {digest}: {exc}") from exc
            await asyncio.to_thread(self._write, path, data)
        self._locks.pop(digest, None)
        return path

    def _write(self, path: Path, data: bytes) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        archives = sorted(self.root.glob("*.tar.gz"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in archives[self.keep :]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
