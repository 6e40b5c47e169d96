"""Pack a local folder into a deterministic, size-capped gzip'd tar, named by its SHA-256 digest.

Deterministic: entries in sorted order, every mtime 0, owner 0:0 with no names, modes reduced to
0755 (directories, executables) or 0644, gzip header without a time: the same files give the same
digest on any machine, so an unchanged folder is uploaded once.

What is left out: ``.git/``, whatever a ``.gitignore`` (at any level, relative to its folder) or
the top's ``.trainyardignore`` (same syntax, via ``pathspec``) matches. What is refused, naming the
path: a symbolic link pointing outside the folder (or absolute), a device, FIFO or socket.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import posixpath
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from pathspec import GitIgnoreSpec

__all__ = [
    "IGNORE_FILE",
    "PackError",
    "PackLimits",
    "Packed",
    "digest_of",
    "pack_dir",
]

IGNORE_FILE = ".trainyardignore"
ALWAYS_LEFT_OUT = (".git",)
DIGEST_PREFIX = "sha256:"


@dataclass(frozen=True)
class PackLimits:
    max_bytes: int = 100 * 1024**2
    """Total size of the files packed (before compression)."""
    max_files: int = 10_000
    """Files, directories and links packed."""


class PackError(ValueError):
    """The folder cannot be packed; the message says which path and why, or which files are biggest."""


@dataclass(frozen=True)
class Packed:
    archive: bytes
    digest: str
    """``sha256:<hex>`` of ``archive``."""
    files: int
    size: int
    """Bytes of file content packed (before compression)."""


def digest_of(data: bytes) -> str:
    return DIGEST_PREFIX + hashlib.sha256(data).hexdigest()


@dataclass
class _Walk:
    root: Path
    limits: PackLimits
    entries: list[tuple[str, os.stat_result]] = field(default_factory=list)
    size: int = 0
    biggest: list[tuple[int, str]] = field(default_factory=list)


def _spec_of(path: Path) -> GitIgnoreSpec | None:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except (FileNotFoundError, IsADirectoryError):
        return None
    return GitIgnoreSpec.from_lines(lines)


def _ignored(rel: str, is_dir: bool, specs: list[tuple[str, GitIgnoreSpec]]) -> bool:
    for base, spec in specs:
        if base and not rel.startswith(base + "/"):
            continue
        below = rel[len(base) + 1 :] if base else rel
        if spec.match_file(below + "/" if is_dir else below):
            return True
    return False


def _check_link(root: Path, rel: str) -> None:
    target = os.readlink(root / rel)
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    if posixpath.isabs(target) or resolved == ".." or resolved.startswith("../"):
        raise PackError(
            f"{rel} is a symbolic link to {target!r}, outside the folder: links are packed only when "
            f"they point inside it (add it to {IGNORE_FILE} to leave it out)"
        )


def _walk(walk: _Walk, rel_dir: str, specs: list[tuple[str, GitIgnoreSpec]]) -> None:
    here = walk.root / rel_dir if rel_dir else walk.root
    local = _spec_of(here / ".gitignore")
    if local is not None:
        specs = [*specs, (rel_dir, local)]
    for name in sorted(os.listdir(here)):
        rel = f"{rel_dir}/{name}" if rel_dir else name
        info = os.lstat(here / name)
        is_dir = stat.S_ISDIR(info.st_mode)
        if (not rel_dir and name in ALWAYS_LEFT_OUT) or _ignored(rel, is_dir, specs):
            continue
        if stat.S_ISLNK(info.st_mode):
            _check_link(walk.root, rel)
        elif not (is_dir or stat.S_ISREG(info.st_mode)):
            raise PackError(
                f"{rel} is not a file, folder or link (a device, FIFO or socket): cannot be packed"
            )
        walk.entries.append((rel, info))
        if len(walk.entries) > walk.limits.max_files:
            raise PackError(
                f"more than {walk.limits.max_files} files and folders to pack; leave some out with "
                f"{IGNORE_FILE} or .gitignore"
            )
        if stat.S_ISREG(info.st_mode):
            walk.size += info.st_size
            walk.biggest.append((info.st_size, rel))
        if is_dir:
            _walk(walk, rel, specs)


def _too_big(walk: _Walk) -> PackError:
    top = sorted(walk.biggest, reverse=True)[:5]
    shown = ", ".join(f"{rel} ({size / 1024**2:.1f} MiB)" for size, rel in top)
    return PackError(
        f"the folder holds {walk.size / 1024**2:.1f} MiB to pack, more than the "
        f"{walk.limits.max_bytes / 1024**2:.0f} MiB allowed; the biggest files: {shown}; leave them out "
        f"with {IGNORE_FILE} or .gitignore"
    )


def _tar_info(rel: str, info: os.stat_result, root: Path) -> tarfile.TarInfo:
    entry = tarfile.TarInfo(rel)
    entry.mtime = 0
    entry.uid = entry.gid = 0
    entry.uname = entry.gname = ""
    if stat.S_ISDIR(info.st_mode):
        entry.type, entry.mode = tarfile.DIRTYPE, 0o755
    elif stat.S_ISLNK(info.st_mode):
        entry.type, entry.mode = tarfile.SYMTYPE, 0o777
        entry.linkname = os.readlink(root / rel)
    else:
        entry.size = info.st_size
        entry.mode = 0o755 if info.st_mode & 0o111 else 0o644
    return entry


def pack_dir(root: Path, limits: PackLimits | None = None) -> Packed:
    """``root`` packed (see the module docstring); raises :class:`PackError` with what to change."""
    limits = limits or PackLimits()
    if not root.is_dir():
        raise PackError(f"{root} is not a folder")
    walk = _Walk(root=root, limits=limits)
    top = _spec_of(root / IGNORE_FILE)
    _walk(walk, "", [("", top)] if top is not None else [])
    if walk.size > limits.max_bytes:
        raise _too_big(walk)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for rel, info in walk.entries:
            entry = _tar_info(rel, info, root)
            if entry.isreg():
                # a file seen as a file when walked: never a link put in its place since
                with open(os.open(root / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
                    data = f.read(limits.max_bytes + 1)
                entry.size = len(data)  # a file that changed size while packing: what was read
                tar.addfile(entry, io.BytesIO(data))
            else:
                tar.addfile(entry)
    archive = gzip.compress(buffer.getvalue(), compresslevel=6, mtime=0)
    return Packed(archive=archive, digest=digest_of(archive), files=len(walk.entries), size=walk.size)
