"""trainyard_shared.blobs: packing a folder deterministically, and a real nats-server Object Store."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import nats
import pytest

from trainyard_contracts import Subjects
from trainyard_shared.blobs import (
    BlobMissing,
    PackError,
    PackLimits,
    check_archive,
    get_blob,
    has_blob,
    open_store,
    pack_dir,
    put_blob,
    unpack_into,
)
from trainyard_shared.bus import declare, object_store_configs


def _tree(root: Path) -> None:
    (root / "pkg").mkdir(parents=True)
    (root / "train.py").write_text("print('hi')\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "pkg" / "mod.py").write_text("X = 1\n")
    (root / "pkg" / "cache.pyc").write_bytes(b"\0")
    (root / ".gitignore").write_text("*.pyc\nbuild/\n")
    (root / "build").mkdir()
    (root / "build" / "big.bin").write_bytes(b"b" * 1000)
    (root / "data.csv").write_text("a,b\n")
    (root / ".trainyardignore").write_text("data.csv\n")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "pkg" / "link.py").symlink_to("mod.py")


def _names(archive: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return tar.getnames()


@pytest.mark.unit
def test_pack_honours_ignores_and_is_deterministic(tmp_path: Path) -> None:
    _tree(tmp_path / "a")
    first = pack_dir(tmp_path / "a")
    assert _names(first.archive) == [
        ".gitignore",
        ".trainyardignore",
        "pkg",
        "pkg/link.py",
        "pkg/mod.py",
        "run.sh",
        "train.py",
    ]
    _tree(tmp_path / "b")  # the same files made later, elsewhere: the same bytes
    os.utime(tmp_path / "b" / "train.py", (1, 1))
    assert pack_dir(tmp_path / "b").digest == first.digest
    (tmp_path / "b" / "train.py").write_text("print('edited')\n")
    assert pack_dir(tmp_path / "b").digest != first.digest


@pytest.mark.unit
def test_pack_round_trip_keeps_exec_bits_and_links(tmp_path: Path) -> None:
    _tree(tmp_path / "a")
    packed = pack_dir(tmp_path / "a")
    dest = tmp_path / "out"
    dest.mkdir()
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert unpack_into(packed.archive, fd) == 7
    finally:
        os.close(fd)
    assert (dest / "train.py").read_text() == "print('hi')\n"
    assert (dest / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (dest / "train.py").stat().st_mode & 0o777 == 0o644
    assert os.readlink(dest / "pkg" / "link.py") == "mod.py"
    assert check_archive(packed.archive) == 7


@pytest.mark.unit
def test_pack_over_the_cap_names_the_biggest_files(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"w" * 3000)
    (tmp_path / "small.py").write_text("x")
    with pytest.raises(PackError) as err:
        pack_dir(tmp_path, PackLimits(max_bytes=2048))
    message = str(err.value)
    assert "more than the" in message and message.index("weights.bin") < message.index("small.py")
    assert ".trainyardignore" in message


@pytest.mark.unit
def test_pack_refuses_a_link_out_of_the_folder_and_a_fifo(tmp_path: Path) -> None:
    (tmp_path / "secrets").symlink_to("/etc")
    with pytest.raises(PackError, match="secrets is a symbolic link to '/etc', outside the folder"):
        pack_dir(tmp_path)
    (tmp_path / "secrets").unlink()
    (tmp_path / "up").symlink_to("../x")
    with pytest.raises(PackError, match="up is a symbolic link"):
        pack_dir(tmp_path)
    (tmp_path / "up").unlink()
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(PackError, match="pipe is not a file, folder or link"):
        pack_dir(tmp_path)


@pytest.mark.service
async def test_object_store_put_once_get_checked(nats_server, prefix: str, tmp_path: Path) -> None:
    subjects = Subjects(prefix)
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await declare(js, object_store_configs(subjects))
        store = await open_store(js, subjects.workdirs_bucket)
        (tmp_path / "a.txt").write_text("hello")
        packed = pack_dir(tmp_path)
        assert not await has_blob(store, packed.digest)
        assert await put_blob(store, packed.archive, packed.digest) == (packed.digest, True)
        assert await put_blob(store, packed.archive) == (packed.digest, False)  # stored once
        assert await has_blob(store, packed.digest)
        assert await get_blob(store, packed.digest, max_bytes=1 << 20) == packed.archive
        with pytest.raises(ValueError, match="digest is"):
            await put_blob(store, b"other", packed.digest)
        with pytest.raises(BlobMissing):
            await get_blob(store, "sha256:" + "0" * 64, max_bytes=1 << 20)
        with pytest.raises(BlobMissing, match="does not exist"):
            await open_store(js, "nosuchbucket")
    finally:
        await nc.close()
