"""Unpack an archive made by :func:`~trainyard_shared.blobs.pack.pack_dir`, as hostile input.

The archive came from a user (through the HTTP API) and lands in a directory a job will run in.
Every member is checked before anything is written (:func:`check_member`), and the write itself
never follows a link: the destination is an open directory descriptor, each parent is opened one
component at a time with ``O_NOFOLLOW``, files are created with ``O_EXCL | O_NOFOLLOW``.

Refused, naming the member: an absolute path, ``..``, a NUL byte; a hard link, device, FIFO or
anything but a file, folder or symbolic link; a link that is absolute or leads outside the tree;
a path that goes through a link; a name given twice. Modes are reduced to 0755 / 0644 (no setuid,
setgid or sticky bit), owners are whoever unpacks. Sizes and counts are capped
(:class:`UnpackLimits`), counted from what is actually read, not from what headers claim.
"""

from __future__ import annotations

import errno
import io
import os
import posixpath
import tarfile
import zlib
from dataclasses import dataclass
from typing import IO

__all__ = ["UnpackLimits", "UnsafeArchive", "check_archive", "check_member", "unpack_into"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_CHUNK = 1 << 20
MAX_PATH_CHARS = 4096
MAX_DEPTH = 64


@dataclass(frozen=True)
class UnpackLimits:
    max_bytes: int = 100 * 1024**2
    """Total bytes of file content."""
    max_files: int = 10_000
    """Members (files, folders, links)."""
    max_archive_bytes: int = 100 * 1024**2
    """The compressed archive itself."""


class UnsafeArchive(ValueError):
    """The archive is refused; the message names the member and the rule it broke."""


def _clean_name(name: str) -> str:
    if "\x00" in name or not name or len(name) > MAX_PATH_CHARS:
        raise UnsafeArchive(f"member {name[:200]!r}: empty, too long or holding a NUL byte")
    if name.startswith("/"):
        raise UnsafeArchive(f"member {name[:200]!r}: absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"member {name[:200]!r}: '..' leads outside the folder")
    if not parts:
        raise UnsafeArchive(f"member {name[:200]!r}: names the folder itself")
    if len(parts) > MAX_DEPTH:
        raise UnsafeArchive(f"member {name[:200]!r}: more than {MAX_DEPTH} levels deep")
    return "/".join(parts)


def check_member(member: tarfile.TarInfo) -> str:
    """The member's clean relative name, or :class:`UnsafeArchive` saying why it is refused."""
    name = _clean_name(member.name)
    if member.issym():
        target = member.linkname
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if not target or "\x00" in target or posixpath.isabs(target):
            raise UnsafeArchive(f"member {name!r}: link to {target[:200]!r} is absolute or empty")
        if resolved == ".." or resolved.startswith("../"):
            raise UnsafeArchive(f"member {name!r}: link to {target[:200]!r} leads outside the folder")
    elif member.islnk():
        raise UnsafeArchive(f"member {name!r}: hard links are not accepted")
    elif not (member.isreg() or member.isdir()):
        raise UnsafeArchive(f"member {name!r}: only files, folders and symbolic links are accepted")
    return name


def _open_parent(dest_fd: int, name: str) -> tuple[int, str]:
    """A new descriptor of ``name``'s parent below ``dest_fd`` (made when missing), no link followed."""
    *parents, leaf = name.split("/")
    fd = os.dup(dest_fd)
    try:
        for i, part in enumerate(parents):
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    where = "/".join(parents[: i + 1])
                    raise UnsafeArchive(
                        f"member {name!r}: {where!r} is a link or a file, not a folder"
                    ) from exc
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd, leaf


@dataclass
class _Budget:
    limits: UnpackLimits
    members: int = 0
    size: int = 0

    def count(self, name: str) -> None:
        self.members += 1
        if self.members > self.limits.max_files:
            raise UnsafeArchive(f"more than {self.limits.max_files} members (at {name!r})")

    def take(self, name: str, n: int) -> None:
        self.size += n
        if self.size > self.limits.max_bytes:
            raise UnsafeArchive(f"more than {self.limits.max_bytes} bytes of content (at {name!r})")


def _write_file(fd: int, leaf: str, name: str, source: IO[bytes], mode: int, budget: _Budget) -> None:
    try:
        out = os.open(leaf, _FILE_FLAGS, mode, dir_fd=fd)
    except FileExistsError as exc:
        raise UnsafeArchive(f"member {name!r}: given twice, or replacing a link or folder") from exc
    with os.fdopen(out, "wb") as f:
        while chunk := source.read(_COPY_CHUNK):
            budget.take(name, len(chunk))
            f.write(chunk)
    os.chmod(leaf, mode, dir_fd=fd, follow_symlinks=False)  # not narrowed by the umask


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, name: str, dest_fd: int, budget: _Budget) -> None:
    fd, leaf = _open_parent(dest_fd, name)
    try:
        if member.isdir():
            try:
                os.mkdir(leaf, 0o755, dir_fd=fd)
            except FileExistsError:
                os.close(os.open(leaf, _DIR_FLAGS, dir_fd=fd))  # a folder, not a link or file
        elif member.issym():
            try:
                os.symlink(member.linkname, leaf, dir_fd=fd)
            except FileExistsError as exc:
                raise UnsafeArchive(f"member {name!r}: given twice") from exc
        else:
            budget.take(name, 0)
            source = tar.extractfile(member)
            assert source is not None
            _write_file(fd, leaf, name, source, 0o755 if member.mode & 0o111 else 0o644, budget)
    finally:
        os.close(fd)


def _members(archive: bytes, limits: UnpackLimits) -> tarfile.TarFile:
    if len(archive) > limits.max_archive_bytes:
        raise UnsafeArchive(f"the archive is {len(archive)} bytes, more than {limits.max_archive_bytes}")
    try:
        return tarfile.open(fileobj=io.BytesIO(archive), mode="r|gz")
    except (tarfile.TarError, zlib.error, EOFError, OSError) as exc:
        raise UnsafeArchive(f"not a gzip'd tar archive: {exc}") from exc


def _each(archive: bytes, limits: UnpackLimits, budget: _Budget, dest_fd: int | None) -> int:
    with _members(archive, limits) as tar:
        try:
            for member in tar:
                name = check_member(member)
                budget.count(name)
                if member.isreg() and budget.size + member.size > limits.max_bytes:
                    raise UnsafeArchive(f"more than {limits.max_bytes} bytes of content (at {name!r})")
                if dest_fd is not None:
                    _extract(tar, member, name, dest_fd, budget)
                elif member.isreg():
                    budget.take(name, member.size)
        except (tarfile.TarError, zlib.error, EOFError) as exc:
            raise UnsafeArchive(f"broken archive: {exc}") from exc
    return budget.members


def check_archive(archive: bytes, limits: UnpackLimits | None = None) -> int:
    """Check every member without writing anything; how many there are. Raises :class:`UnsafeArchive`."""
    limits = limits or UnpackLimits()
    return _each(archive, limits, _Budget(limits), None)


def unpack_into(archive: bytes, dest_fd: int, limits: UnpackLimits | None = None) -> int:
    """Unpack ``archive`` below the open directory ``dest_fd`` (expected empty); how many members.
    Raises :class:`UnsafeArchive` (part of the tree may be written: the caller removes it)."""
    limits = limits or UnpackLimits()
    return _each(archive, limits, _Budget(limits), dest_fd)
