"""The executor's file operations below a job's work dir never follow a link (pure file system,
no engine): the building blocks the container backends use."""

from __future__ import annotations

import os

import pytest

from trainyard_shared.hostpaths import UnsafePath, open_dir, read_in, write_in

pytestmark = [pytest.mark.security, pytest.mark.unit]


def test_a_link_anywhere_below_the_root_is_refused_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    work = tmp_path / "work"
    (work / "a").mkdir(parents=True)
    (work / "a" / "b").symlink_to(outside)
    with pytest.raises(UnsafePath, match=r"^'a/b' is a symbolic link: refused"):
        open_dir(work, "a/b/c", create=True)
    assert list(outside.iterdir()) == []  # nothing made through the link
    with pytest.raises(UnsafePath, match="must stay inside"):
        open_dir(work, "../outside", create=True)


def test_writing_replaces_a_planted_link_instead_of_writing_through_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    meta = tmp_path / "work" / ".trainyard"
    meta.mkdir(parents=True)
    (meta / "cursor").symlink_to(victim)
    write_in(tmp_path / "work", ".trainyard", "cursor", b"{}")
    assert victim.read_text() == "precious"
    assert not (meta / "cursor").is_symlink() and (meta / "cursor").read_bytes() == b"{}"
    assert read_in(tmp_path / "work", ".trainyard", "cursor") == b"{}"


def test_reading_refuses_a_link_and_a_fifo(tmp_path):
    meta = tmp_path / "work" / ".trainyard"
    meta.mkdir(parents=True)
    (meta / "link").symlink_to(tmp_path / "elsewhere")
    os.mkfifo(meta / "fifo")  # would block a plain open() forever
    for name in ("link", "fifo"):
        with pytest.raises(UnsafePath):
            read_in(tmp_path / "work", ".trainyard", name)
