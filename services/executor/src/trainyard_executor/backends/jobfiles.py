"""Modes and owners of what the local backend keeps on disk, so a job reaches its own files only.

- The executor's directories are ``0700``; on the way to a job's work dir they are ``0711`` while
  jobs run as other users (they may pass through, not list).
- An attempt's work dir (its checkout and outputs) and its job's checkpoint dir belong to the job's
  user, mode ``0700``; the bookkeeping in it (``.trainyard/``: logs, exit records, cursor) stays
  the executor's, ``0700``, files ``0600``, so a job cannot forge its own exit or pid records.
- Once the attempt has ended the top of its work and checkpoint dirs goes back to the executor,
  so the next attempt that gets the same uid cannot read them.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

__all__ = [
    "PASSABLE_DIR",
    "PRIVATE_DIR",
    "PRIVATE_FILE",
    "chown_tree",
    "kill_user",
    "open_private",
    "secure_chain",
    "take_back",
]

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
PASSABLE_DIR = 0o711
_KILL_ROUNDS = 5


def open_private(path: Path) -> int:
    """A descriptor for writing ``path``, created ``0600`` (truncated if it exists)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE)


def secure_chain(top: Path, below: Path, passable: bool) -> None:
    """Set the mode of ``top`` and every directory between it and ``below`` (exclusive): 0711 when
    jobs run as other users and must pass through, else 0700. Only directories this process owns."""
    mode = PASSABLE_DIR if passable else PRIVATE_DIR
    me = os.geteuid()
    current = below.parent
    chain = []
    while True:
        chain.append(current)
        if current == top or current == current.parent:
            break
        if top not in current.parents:
            return  # ``below`` is not under ``top``: an absolute work dir given elsewhere
        current = current.parent
    for directory in chain:
        with contextlib.suppress(FileNotFoundError):
            if directory.stat().st_uid == me:
                directory.chmod(mode)


def chown_tree(path: Path, uid: int, gid: int, skip: str | None = None) -> None:
    """Hand ``path`` and everything under it (symlinks themselves, not their targets) to uid:gid;
    ``skip``: a name directly under ``path`` to leave alone."""
    os.chown(path, uid, gid, follow_symlinks=False)
    for root, dirs, files in os.walk(path):
        if skip is not None and Path(root) == path and skip in dirs:
            dirs.remove(skip)
        for name in (*dirs, *files):
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def take_back(path: Path) -> None:
    """The attempt has ended: its top directory goes back to this process, mode 0700."""
    with contextlib.suppress(FileNotFoundError):
        os.chown(path, os.geteuid(), os.getegid(), follow_symlinks=False)
        os.chmod(path, PRIVATE_DIR)


def _real_uid(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def kill_user(uid: int) -> int:
    """SIGKILL every process whose real uid is ``uid`` (a uid of one attempt: whatever it left,
    inside its cgroup or not); how many were signalled. Never for the executor's own uid."""
    if uid == os.getuid() or uid == 0:
        return 0
    killed = 0
    for _ in range(_KILL_ROUNDS):  # one that forked during a scan is found by the next
        found = [int(name) for name in os.listdir("/proc") if name.isdigit() and _real_uid(name) == uid]
        if not found:
            break
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    return killed


def private_dir(path: Path) -> None:
    """Make ``path`` a directory of this process, mode 0700. Whatever a job may have put there in
    an earlier run of the same attempt dir (a symlink, a directory of its own) is removed first,
    so this process never writes its records through something a job controls."""
    if path.is_symlink() or (path.exists() and path.stat().st_uid != os.geteuid()):
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            import shutil

            shutil.rmtree(path)
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    path.chmod(PRIVATE_DIR)


def hand_over(
    root: Path, workdir: Path, checkpoint_dir: Path | None, user: tuple[int, int] | None, keep: str
) -> Path | None:
    """Before the job starts: the modes on the way to its work dir, and its work dir (all but
    ``keep``, the executor's bookkeeping) and checkpoint dir given to ``user``. Returns the job's
    private temporary directory (``<workdir>/.tmp``) when it runs as a user of its own, else None."""
    secure_chain(root, workdir, passable=user is not None)
    workdir.chmod(PRIVATE_DIR)
    tmp: Path | None = None
    if user is not None:
        tmp = workdir / ".tmp"
        tmp.mkdir(mode=PRIVATE_DIR, exist_ok=True)
        chown_tree(workdir, *user, skip=keep)
    if checkpoint_dir is not None:
        secure_chain(checkpoint_dir.parent, checkpoint_dir, passable=user is not None)
        checkpoint_dir.chmod(PRIVATE_DIR)
        if user is not None:
            chown_tree(checkpoint_dir, *user)
    return tmp
