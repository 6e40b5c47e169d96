"""Unpack a job's packed workdir into its attempt's ``src`` directory, on every host backend.

The archive is the user's (hostile input): trainyard_shared.blobs checks each member and writes
below a directory descriptor without following links. ``src`` is opened from the attempt's work
dir with :mod:`trainyard_shared.hostpaths` (no link followed: an earlier run of the same attempt
dir may have left one there) and starts empty every time, so a re-run never mixes two trees.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from trainyard_shared.blobs import UnpackLimits, UnsafeArchive, unpack_into
from trainyard_shared.hostpaths import ensure_dir

__all__ = ["WorkdirError", "unpack_source", "unpack_workdir"]

SOURCE_DIR = "src"


class WorkdirError(RuntimeError):
    """The packed workdir could not be unpacked; the message says which member and why."""


def _fresh_dir(work_fd: int, name: str) -> None:
    try:
        os.mkdir(name, 0o700, dir_fd=work_fd)
    except FileExistsError:
        # rmtree on a dir_fd never follows a link (it removes the link itself)
        shutil.rmtree(name, dir_fd=work_fd)
        os.mkdir(name, 0o700, dir_fd=work_fd)


def _unpack(archive: Path, work_dir: Path, limits: UnpackLimits) -> Path:
    return unpack_source(archive.read_bytes(), work_dir, limits)


def unpack_source(data: bytes, work_dir: Path, limits: UnpackLimits) -> Path:
    """(Blocking.) A packed workdir's bytes unpacked into ``work_dir/src`` (made empty first), as
    the host backends do and a Kubernetes pod's init container (trainyard_executor.fetch)."""
    with ensure_dir(work_dir, ".", create=False) as work_fd:
        _fresh_dir(work_fd, SOURCE_DIR)
        with ensure_dir(work_fd, SOURCE_DIR, create=False) as src_fd:
            try:
                unpack_into(data, src_fd, limits)
            except UnsafeArchive as exc:
                raise WorkdirError(f"the packed workdir is refused: {exc}") from exc
            os.fchmod(src_fd, 0o755)
    return work_dir / SOURCE_DIR


async def unpack_workdir(archive: Path, work_dir: Path, limits: UnpackLimits | None = None) -> Path:
    """``archive`` unpacked into ``work_dir/src`` (made empty first); the path of ``src``.
    Raises WorkdirError (a refused archive) or OSError."""
    return await asyncio.to_thread(_unpack, archive, work_dir, limits or UnpackLimits())
