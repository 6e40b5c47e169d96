"""A pipeline step's outputs folder handed to the steps that depend on it (``$TRAINYARD_INPUTS``).

Packing (the step's side): when an attempt of a job with ``pass_outputs`` succeeds, its outputs
folder is packed (trainyard_shared.blobs: deterministic, ``.trainyardignore`` / ``.gitignore``
honoured, links out of the folder and devices refused, size-capped naming the biggest files) and
put once into the step outputs bucket under its digest (a second put of the same digest is
skipped). The folder is the job's: its path is opened below the executor's part one component at a
time without following a link (``outputsfile.job_part_of``), and packed through that descriptor.

Unpacking (the dependent's side): each ``inputs`` entry of the spec (``<step>`` or
``<step>/<index>``, a digest) is fetched into this executor's cache (checked against its digest,
fetched once however many dependents run here) and unpacked as hostile input into the attempt's
own inputs folder, ``<work root>/<job>/attempt-<n>.inputs/<path>/``, outside the job's work dir
(the container backends mount it read-only at ``/trainyard/inputs``). The folders together are
capped (``max_step_inputs_bytes``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from nats.js.object_store import ObjectStore

from trainyard_contracts.spec import StepInput
from trainyard_executor.outputsfile import job_part_of
from trainyard_executor.workdirs import WorkdirCache
from trainyard_shared.blobs import (
    Packed,
    PackError,
    PackLimits,
    UnpackLimits,
    UnsafeArchive,
    pack_dir,
    put_blob,
    unpack_into,
)
from trainyard_shared.hostpaths import ensure_dir

__all__ = ["INPUTS_SUFFIX", "StepFolders", "StepFoldersError", "archive_cap", "pack_outputs", "unpack_inputs"]

INPUTS_SUFFIX = ".inputs"


class NothingToPass(Exception):
    """The job left no outputs folder (it removed the one made for it): nothing is passed on."""


class StepFoldersError(RuntimeError):
    """An outputs folder could not be passed on, or an input could not be put in place: the
    message says which and why (the attempt fails with it)."""


def archive_cap(limits: PackLimits) -> int:
    """The largest archive a folder within ``limits`` packs to: its content, a tar header per
    entry (512 bytes, twice for a long name), and gzip's worst case on incompressible data."""
    return limits.max_bytes + 1024 * (limits.max_files + 2) + limits.max_bytes // 1000 + 64 * 1024


def pack_outputs(output_dir: Path, job_part: str, limits: PackLimits) -> Packed:
    """The job's outputs folder packed, reached without following a link it planted (PackError)."""
    root, rel = job_part_of(output_dir, job_part)
    try:
        with ensure_dir(root, rel, create=False) as fd:
            return pack_dir(Path(f"/proc/self/fd/{fd}"), limits)
    except FileNotFoundError:
        raise NothingToPass(job_part) from None
    except OSError as exc:  # a link where a folder should be (UnsafePath), or unreadable
        raise PackError(f"the outputs folder {job_part!r} cannot be read: {exc}") from exc


@dataclass
class StepFolders:
    """Packs a step's outputs into the bucket, and puts a dependent's inputs in place."""

    store: Callable[[], Awaitable[ObjectStore]]
    cache: WorkdirCache
    pack_limits: PackLimits
    max_inputs_bytes: int

    async def share(self, output_dir: Path, job_part: str) -> str | None:
        """Pack and store the outputs folder; its digest (StepFoldersError saying why not), None
        when the job left no folder (its dependents find none: absent, as for a failed step)."""
        try:
            packed = await asyncio.to_thread(pack_outputs, output_dir, job_part, self.pack_limits)
        except NothingToPass:
            return None
        except PackError as exc:
            raise StepFoldersError(f"the outputs folder could not be passed to later steps: {exc}") from exc
        try:
            digest, _ = await put_blob(await self.store(), packed.archive, packed.digest)
        except Exception as exc:  # NATS away, or the bucket full (discard new)
            raise StepFoldersError(
                f"the outputs folder ({packed.size} bytes, {packed.files} entries) could not be stored "
                f"for later steps: {exc}"
            ) from exc
        return digest

    async def prepare(self, inputs: list[StepInput], folder: Path) -> Path | None:
        """``inputs`` fetched and unpacked below ``folder`` (made empty first); None when there
        are none. StepFoldersError names the input that could not be put in place."""
        if not inputs:
            return None
        archives = [(entry, await self._fetch(entry)) for entry in inputs]
        await asyncio.to_thread(self._unpack_all, archives, folder)
        return folder

    async def _fetch(self, entry: StepInput) -> Path:
        try:
            return await self.cache.fetch(entry.digest)
        except Exception as exc:
            raise StepFoldersError(f"the outputs of step {entry.path} ({entry.digest}): {exc}") from exc

    def _unpack_all(self, archives: list[tuple[StepInput, Path]], folder: Path) -> None:
        remove(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(folder, 0o755)
        loaded = ((entry.path, archive.read_bytes()) for entry, archive in archives)  # one at a time
        unpack_inputs(folder, loaded, self.pack_limits, self.max_inputs_bytes)


def unpack_inputs(
    folder: Path, archives: Iterable[tuple[str, bytes]], pack_limits: PackLimits, max_inputs_bytes: int
) -> None:
    """(Blocking.) Each ``(path, archive)`` unpacked as hostile input into ``folder/<path>/`` (an
    existing, empty folder), together at most ``max_inputs_bytes``; StepFoldersError says which
    was refused. The executor's own unpacking and a Kubernetes pod's init container (fetch.py)."""
    budget = max_inputs_bytes  # checked after each (one over it is at most one folder's cap)
    limits = UnpackLimits(
        max_bytes=pack_limits.max_bytes,
        max_files=pack_limits.max_files,
        max_archive_bytes=archive_cap(pack_limits),
    )
    with ensure_dir(folder, ".", create=False) as top:
        for path, archive in archives:
            with ensure_dir(top, path, create=True, mode=0o755) as fd:
                try:
                    unpack_into(archive, fd, limits)
                except UnsafeArchive as exc:
                    raise StepFoldersError(f"the outputs of step {path} are refused: {exc}") from exc
                budget -= _content_bytes(fd)
            if budget < 0:
                raise StepFoldersError(
                    f"the inputs hold more than the {max_inputs_bytes} bytes an attempt takes"
                )


def _content_bytes(dir_fd: int) -> int:
    """Bytes of the regular files below ``dir_fd`` (what was just unpacked; no link followed)."""
    total = 0
    for _, _, files, fd in os.fwalk(".", dir_fd=dir_fd, follow_symlinks=False):
        for name in files:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return total


def remove(folder: Path) -> None:
    """An attempt's inputs folder gone (its end recorded, or before it is made again)."""
    shutil.rmtree(folder, ignore_errors=True)
