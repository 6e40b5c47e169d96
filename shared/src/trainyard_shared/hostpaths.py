"""Host paths inside a tree a job can write to, opened without following links.

A job's work dir is mounted into its container (or is the local job's cwd): anything in it may be
a symbolic link the job planted, or one committed in its repository. Every operation the executor
does below such a directory goes through a directory file descriptor, one component at a time with
``O_NOFOLLOW``, so a link is refused (:class:`UnsafePath`) instead of followed to a host path the
job chose. The root itself (the executor's own work dir) is trusted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

__all__ = [
    "UnsafePath",
    "chown_tree",
    "ensure_dir",
    "open_dir",
    "read_file",
    "read_in",
    "write_file",
    "write_in",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_READ = 1 << 20


class UnsafePath(OSError):
    """A path component is a symbolic link or not a directory: refused, not followed."""

    def __str__(self) -> str:
        return str(self.strerror)


def _parts(rel: str | PurePosixPath) -> list[str]:
    parts = [p for p in PurePosixPath(rel).parts if p not in ("", ".")]
    if any(p == ".." or p == "/" for p in parts):
        raise UnsafePath(errno.EINVAL, f"{str(rel)!r} must stay inside its directory")
    return parts


def _open_child(parent_fd: int, name: str, shown: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            kind = "a symbolic link" if _is_link(parent_fd, name) else "not a directory"
            raise UnsafePath(exc.errno, f"{shown!r} is {kind}: refused (links are not followed)") from exc
        raise


def _is_link(parent_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_dir(
    root: Path | int,
    rel: str | PurePosixPath = ".",
    *,
    create: bool = False,
    mode: int = 0o755,
    owner: tuple[int, int] | None = None,
) -> int:
    """A file descriptor of the directory ``root/rel`` (the caller closes it).

    ``root`` (a path or an open directory fd) is trusted; below it no component may be a link.
    With ``create``, missing components are made with ``mode`` (and given to ``owner`` when set:
    the directory is new, nobody but the executor has held it).
    """
    fd = (
        os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if isinstance(root, Path) else os.dup(root)
    )
    walked: list[str] = []
    try:
        for name in _parts(rel):
            walked.append(name)
            shown = "/".join(walked)
            if create:
                try:
                    os.mkdir(name, mode, dir_fd=fd)
                except FileExistsError:
                    pass
                else:
                    if owner is not None:
                        os.chown(name, *owner, dir_fd=fd, follow_symlinks=False)
            child = _open_child(fd, name, shown)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def ensure_dir(
    root: Path | int,
    rel: str | PurePosixPath = ".",
    *,
    create: bool = True,
    mode: int = 0o755,
    owner: tuple[int, int] | None = None,
) -> Iterator[int]:
    """:func:`open_dir` as a context manager that closes the descriptor."""
    fd = open_dir(root, rel, create=create, mode=mode, owner=owner)
    try:
        yield fd
    finally:
        os.close(fd)


def write_file(dir_fd: int, name: str, data: bytes, mode: int = 0o644) -> None:
    """Replace ``name`` in ``dir_fd`` atomically; whatever was there (a planted link included) is
    replaced, never written through."""
    tmp = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd
    )
    try:
        with os.fdopen(fd, "wb", closefd=True) as f:
            f.write(data)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def read_file(dir_fd: int, name: str, limit: int = MAX_READ) -> bytes:
    """At most ``limit`` bytes of the regular file ``name`` in ``dir_fd``; a link or anything but
    a regular file (a FIFO would block) is refused."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(exc.errno, f"{name!r} is a symbolic link: refused") from exc
        raise
    with os.fdopen(fd, "rb", closefd=True) as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise UnsafePath(errno.EINVAL, f"{name!r} is not a regular file: refused")
        return f.read(limit)


def chown_tree(dir_fd: int, uid: int, gid: int) -> None:
    """Give the directory ``dir_fd`` and everything below it to ``uid:gid``, links themselves
    included, never what they point at (``os.fwalk`` checks each directory it enters is the one it
    listed)."""
    os.fchown(dir_fd, uid, gid)
    for _, dirnames, filenames, fd in os.fwalk(".", dir_fd=dir_fd, follow_symlinks=False):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(FileNotFoundError):
                os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)


def write_in(root: Path, rel_dir: str, name: str, data: bytes) -> None:
    """Write ``root/rel_dir/name`` (the directory made when missing), no link followed."""
    with ensure_dir(root, rel_dir) as fd:
        write_file(fd, name, data)


def read_in(root: Path, rel_dir: str, name: str, limit: int = MAX_READ) -> bytes:
    """Read ``root/rel_dir/name``, no link followed (FileNotFoundError when missing)."""
    with ensure_dir(root, rel_dir, create=False) as fd:
        return read_file(fd, name, limit)
