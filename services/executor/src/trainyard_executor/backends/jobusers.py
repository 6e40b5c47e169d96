"""Which user a local job runs as (``TRAINYARD_EXECUTOR_RUN_AS``), and whether it can get to its files.

A job that runs as the executor's user reads whatever the executor can: the API token in the data
dir, the executor's ``/proc/<pid>/environ``, other jobs' work dirs, the MLflow store. When the
executor is root, each attempt therefore runs as a user of its own:

- ``auto`` (default): root -> a uid per attempt (``per-attempt`` below) if the job can reach its
  directories, else the executor's user with an error in the log saying which directory blocks;
  not root -> the executor's user (there is no other to switch to).
- ``per-attempt``: a uid (gid = uid, no supplementary groups) of its own for every running attempt,
  from the executor's block of 65 536 uids (``TRAINYARD_EXECUTOR_JOB_UID_BASE``; default: a block
  between 2^30 and 2^31 chosen by the digest of the executor's directory). No passwd entry is
  needed. Jobs cannot read each other's files or signal each other's processes.
- ``UID[:GID]`` or a user name: every job runs as that one user (jobs are kept from the stack, not
  from each other).
- ``root``: jobs run as the executor's user. Unsafe: a job reads every secret the executor can.

Explicit choices are checked at start: an executor told to switch users that cannot (not root) or
whose jobs could not reach their directories refuses to start, naming the directory.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BLOCK", "JobUsers", "RunAsError", "job_users", "unreachable"]

BLOCK = 65536
_BLOCKS_FROM = 1 << 30
_BLOCKS = (1 << 30) // BLOCK


class RunAsError(ValueError):
    """``run_as`` cannot be honoured (named user unknown, not root, a directory out of reach)."""


@dataclass
class JobUsers:
    """The users jobs run as: one fixed ``(uid, gid)``, or one per attempt from ``[base, base+BLOCK)``."""

    fixed: tuple[int, int] | None = None
    base: int | None = None
    in_use: dict[int, str] = field(default_factory=dict)

    @property
    def per_attempt(self) -> bool:
        """Each attempt has a uid of its own: whatever runs as it belongs to that attempt."""
        return self.fixed is None

    def describe(self) -> str:
        if self.fixed is not None:
            return f"uid {self.fixed[0]} gid {self.fixed[1]} (every job)"
        assert self.base is not None
        return f"a uid per attempt from {self.base}-{self.base + BLOCK - 1}"

    def allocate(self, owner: str) -> tuple[int, int]:
        """A user for ``owner`` (an attempt): the fixed one, or the lowest uid of the block no
        running attempt of this executor holds."""
        if self.fixed is not None:
            return self.fixed
        assert self.base is not None
        for uid in range(self.base, self.base + BLOCK):
            if uid not in self.in_use:
                self.in_use[uid] = owner
                return uid, uid
        raise RunAsError(f"all {BLOCK} job uids from {self.base} are in use")

    def hold(self, uid: int, owner: str) -> None:
        """An adopted attempt keeps the uid it ran as."""
        if self.fixed is None:
            self.in_use[uid] = owner

    def release(self, uid: int, owner: str) -> None:
        if self.in_use.get(uid) == owner:
            del self.in_use[uid]


def _block_base(tag: str, configured: int | None) -> int:
    if configured is not None:
        return configured
    digest = int(hashlib.sha256(tag.encode()).hexdigest()[:8], 16)
    return _BLOCKS_FROM + (digest % _BLOCKS) * BLOCK


def _named(spec: str) -> tuple[int, int]:
    uid_text, _, gid_text = spec.partition(":")
    if uid_text.isdigit():
        uid = int(uid_text)
        gid = int(gid_text) if gid_text.isdigit() else uid
        if gid_text and not gid_text.isdigit():
            raise RunAsError(f"run_as {spec!r}: the gid must be a number")
        return uid, gid
    try:
        entry = pwd.getpwnam(uid_text)
    except KeyError:
        raise RunAsError(f"run_as {spec!r}: no such user") from None
    return entry.pw_uid, int(gid_text) if gid_text.isdigit() else entry.pw_gid


def unreachable(path: Path, uid: int | None, gid: int | None) -> Path | None:
    """The first directory on the way to ``path`` (itself included, created or not) that a process
    of ``uid``/``gid`` (None: any user of no group of ours) may not pass, or None."""
    for directory in [*reversed(path.parents), path]:
        try:
            st = os.stat(directory)
        except FileNotFoundError:
            return None  # the executor makes the rest, passable
        if not stat.S_ISDIR(st.st_mode):
            return directory
        if uid is not None and st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif gid is not None and st.st_gid == gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return directory
    return None


def job_users(
    run_as: str, tag: str, uid_base: int | None, needs: list[Path]
) -> tuple[JobUsers | None, str, bool]:
    """What ``run_as`` means here: (the users jobs run as or None for the executor's own, a line
    for the log saying so, whether that line is a warning: root jobs, which ``auto`` could not
    avoid or ``root`` asked for). Raises :class:`RunAsError` for an explicit choice that cannot hold."""
    root = os.geteuid() == 0
    choice = run_as.strip().lower()
    if choice in ("root", "0", "0:0") or (choice == "auto" and not root):
        who = "root (unsafe: jobs read what the executor can)" if root else f"uid {os.geteuid()}"
        return None, f"jobs run as the executor's user, {who}", root
    if not root:
        raise RunAsError(
            f"run_as {run_as!r} needs an executor running as root (it runs as uid {os.geteuid()})"
        )
    if choice in ("auto", "per-attempt"):
        users = JobUsers(base=_block_base(tag, uid_base))
        probe_uid: int | None = None
        probe_gid: int | None = None
    else:
        fixed = _named(run_as.strip())
        users = JobUsers(fixed=fixed)
        probe_uid, probe_gid = fixed
    for path in needs:
        blocked = unreachable(path, probe_uid, probe_gid)
        if blocked is None:
            continue
        why = (
            f"jobs could not reach {path}: {blocked} is mode {stat.S_IMODE(os.stat(blocked).st_mode):04o}"
            if blocked.is_dir()
            else f"jobs could not reach {path}: {blocked} is not a directory"
        )
        if choice != "auto":
            raise RunAsError(f"run_as {run_as!r}: {why}")
        return (
            None,
            f"jobs run as the executor's user, root: {why} (choose a data dir and Python others may "
            "pass through, or set TRAINYARD_EXECUTOR_RUN_AS=root to say this is intended)",
            True,
        )
    return users, f"jobs run as {users.describe()}", False
