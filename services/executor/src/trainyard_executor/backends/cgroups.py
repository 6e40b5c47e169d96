"""A cgroup v2 directory per local attempt, so that everything a job starts can be stopped as one.

A process group is not enough: a child that calls ``setsid()`` leaves it, and a signal to the group
no longer reaches it. A cgroup cannot be left by an unprivileged process, and ``cgroup.kill``
(Linux 5.14) SIGKILLs every process in it at once. Where there is no writable cgroup v2 hierarchy
with ``cgroup.kill`` (cgroup v1 only, a read-only ``/sys/fs/cgroup`` in a container, an old kernel)
the backend falls back to process groups and says so (:attr:`Containment.kind`).

Layout: ``<cgroup2 mount>/<the executor's own cgroup>/trainyard-<tag>/<job>.<attempt>``; the rank
supervisors join the attempt's directory before they start the job (``supervise.py --cgroup``).
No controller is enabled, so nothing about the executor's own cgroup changes; under systemd give
the executor's unit ``Delegate=yes`` so that systemd leaves the sub-tree alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AttemptCgroup", "Containment", "detect_containment"]

_POLL_S = 0.05


@dataclass(frozen=True)
class Containment:
    """How this backend contains a job's processes: ``cgroup`` (``root`` is where attempts'
    cgroups are made) or ``process-group`` (``reason`` says why not a cgroup)."""

    kind: str
    root: Path | None = None
    reason: str = ""

    def describe(self) -> str:
        if self.kind == "cgroup":
            return f"cgroup v2 per attempt under {self.root}"
        return f"process group per rank ({self.reason})"

    def attempt(self, job_id: str, attempt: int) -> AttemptCgroup | None:
        if self.root is None:
            return None
        return AttemptCgroup(self.root / f"{job_id}.{attempt}")


def _cgroup2_mount(mountinfo: str) -> Path | None:
    """The mount point of the cgroup v2 hierarchy in /proc/self/mountinfo's text."""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if sep and right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split(" ")[4])
    return None


def _own_cgroup(proc_cgroup: str) -> str | None:
    """This process's cgroup v2 path ("0::/..." in /proc/self/cgroup)."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip()
    return None


def detect_containment(tag: str) -> Containment:
    """Make (or find) this backend's cgroup directory; fall back to process groups if it cannot."""
    try:
        mount = _cgroup2_mount(Path("/proc/self/mountinfo").read_text())
        own = _own_cgroup(Path("/proc/self/cgroup").read_text())
    except OSError as exc:
        return Containment("process-group", reason=f"cannot read /proc: {exc}")
    if mount is None or own is None:
        return Containment("process-group", reason="no cgroup v2 hierarchy mounted")
    if " (deleted)" in own:
        return Containment("process-group", reason=f"this process's cgroup {own} was removed")
    digest = hashlib.sha256(tag.encode()).hexdigest()[:12]
    root = mount / own.lstrip("/") / f"trainyard-{digest}"
    try:  # made now to see that it can be, then again by the first attempt (see kill_and_remove)
        root.mkdir(mode=0o755, exist_ok=True)
    except OSError as exc:
        return Containment("process-group", reason=f"cannot create {root}: {exc.strerror or exc}")
    can_kill = (root / "cgroup.kill").exists()
    with contextlib.suppress(OSError):
        root.rmdir()
    if not can_kill:
        return Containment("process-group", reason="the kernel has no cgroup.kill (Linux < 5.14)")
    return Containment("cgroup", root=root)


@dataclass(frozen=True)
class AttemptCgroup:
    """One attempt's cgroup directory."""

    path: Path

    def create(self) -> None:
        self.path.mkdir(mode=0o755, parents=True, exist_ok=True)

    def populated(self) -> bool:
        try:
            events = (self.path / "cgroup.events").read_text()
        except FileNotFoundError:
            return False
        return "populated 1" in events

    def kill(self) -> None:
        """SIGKILL every process in it (none may escape: a cgroup is not left by choice)."""
        with contextlib.suppress(FileNotFoundError):
            (self.path / "cgroup.kill").write_text("1")

    async def kill_and_remove(self, wait_s: float) -> bool:
        """Kill what is left, wait (at most ``wait_s``) until it is empty, remove it. True if it
        is gone; False if something survived the wait (the kernel delivers SIGKILL asynchronously;
        a process stuck in uninterruptible sleep can take longer)."""
        if not self.path.exists():
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        if self.populated():
            self.kill()
        # the kernel offers no awaitable "cgroup became empty" without inotify: poll cgroup.events
        while self.populated() and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_POLL_S)
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        with contextlib.suppress(OSError):  # the backend's directory too, once no attempt is left in it
            self.path.parent.rmdir()
        return True

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except (FileNotFoundError, ValueError):
            return []
