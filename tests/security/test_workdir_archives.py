"""A packed workdir is hostile input: every way out of the destination is refused, by name.

The archive reaches the executor from a user through the HTTP API; trainyard_shared.blobs checks
each member before writing and writes without following links (docs/security.md, "workdir").
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainyard_shared.blobs import UnpackLimits, UnsafeArchive, check_archive, unpack_into

pytestmark = pytest.mark.security


def _archive(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(buffer.getvalue(), mtime=0)


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def _entry(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


@pytest.fixture
def dest(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    path = tmp_path / "dest"
    path.mkdir()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    yield path, fd
    os.close(fd)


HOSTILE = {
    "absolute path": (_archive(_file("/etc/evil")), "absolute path"),
    "dot-dot": (_archive(_file("a/../../evil")), "'..' leads outside"),
    "absolute link": (_archive(_entry("l", tarfile.SYMTYPE, "/etc/passwd")), "absolute or empty"),
    "link out": (_archive(_entry("a/l", tarfile.SYMTYPE, "../../etc")), "leads outside the folder"),
    "hard link": (_archive(_file("f"), _entry("h", tarfile.LNKTYPE, "f")), "hard links"),
    "char device": (_archive(_entry("null", tarfile.CHRTYPE)), "only files, folders"),
    "fifo": (_archive(_entry("p", tarfile.FIFOTYPE)), "only files, folders"),
    "twice": (_archive(_file("f"), _file("f")), "given twice"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_member_is_refused_and_nothing_escapes(
    case: str, dest: tuple[Path, int], tmp_path: Path
) -> None:
    archive, message = HOSTILE[case]
    with pytest.raises(UnsafeArchive, match=message):
        unpack_into(archive, dest[1])
    assert not (tmp_path / "evil").exists() and not Path("/etc/evil").exists()


def test_checking_refuses_without_writing(dest: tuple[Path, int]) -> None:
    with pytest.raises(UnsafeArchive, match="absolute path"):
        check_archive(HOSTILE["absolute path"][0])


def test_a_file_through_a_planted_link_is_refused(dest: tuple[Path, int], tmp_path: Path) -> None:
    """A link inside the tree (allowed) to a folder, then a file "through" it: the parent is opened
    without following, so the write cannot land where the link points."""
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = _archive(_entry("d", tarfile.SYMTYPE, "."), _file("d/x"))
    with pytest.raises(UnsafeArchive, match="'d' is a link or a file"):
        unpack_into(archive, dest[1])


def test_a_link_then_a_file_of_the_same_name_does_not_write_through(dest: tuple[Path, int]) -> None:
    archive = _archive(_entry("f", tarfile.SYMTYPE, "g"), _file("f", b"payload"))
    with pytest.raises(UnsafeArchive, match="given twice, or replacing a link"):
        unpack_into(archive, dest[1])
    assert not (dest[0] / "g").exists()


def test_setuid_and_sticky_bits_are_dropped(dest: tuple[Path, int]) -> None:
    unpack_into(_archive(_file("suid", b"#!/bin/sh\n", mode=0o6755), _file("plain", mode=0o1666)), dest[1])
    assert (dest[0] / "suid").stat().st_mode & 0o7777 == 0o755
    assert (dest[0] / "plain").stat().st_mode & 0o7777 == 0o644


def test_size_and_count_caps(dest: tuple[Path, int]) -> None:
    big = _archive(_file("a", b"a" * 600), _file("b", b"b" * 600))
    with pytest.raises(UnsafeArchive, match=r"more than 1000 bytes of content \(at 'b'"):
        unpack_into(big, dest[1], UnpackLimits(max_bytes=1000))
    many = _archive(*(_file(f"f{i}") for i in range(4)))
    with pytest.raises(UnsafeArchive, match="more than 3 members"):
        check_archive(many, UnpackLimits(max_files=3))
    with pytest.raises(UnsafeArchive, match="the archive is"):
        check_archive(many, UnpackLimits(max_archive_bytes=10))


def test_a_gzip_bomb_is_stopped_by_what_is_read(dest: tuple[Path, int]) -> None:
    """A header that lies about the size is caught on the header; a real 50 MiB of zeros (a few
    KiB compressed) by the content cap, before it is all written."""
    bomb = _archive(_file("zeros", b"\0" * (50 * 1024**2)))
    assert len(bomb) < 1024**2
    with pytest.raises(UnsafeArchive, match="bytes of content"):
        unpack_into(bomb, dest[1], UnpackLimits(max_bytes=1024**2))
    assert not (dest[0] / "zeros").exists() or (dest[0] / "zeros").stat().st_size <= 1024**2


def test_not_an_archive(dest: tuple[Path, int]) -> None:
    with pytest.raises(UnsafeArchive, match=r"not a gzip'd tar|broken archive"):
        unpack_into(b"definitely not gzip", dest[1])
