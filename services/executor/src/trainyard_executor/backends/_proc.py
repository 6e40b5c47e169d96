"""Small helpers to run auxiliary commands (git, pip, venv) as cancellable asyncio subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from trainyard_executor.procfs import stat_fields


@dataclass(frozen=True)
class Captured:
    returncode: int
    stdout: str
    stderr: str


def tail(text: str, max_chars: int = 4000) -> str:
    """The last ``max_chars`` characters of ``text``, stripped; prefixed with "..." when cut."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    return "..." + text[-max_chars:]


async def run_captured(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> Captured:
    """Run ``argv`` to completion, capturing stdout/stderr.

    The command runs in its own process group; if the calling task is cancelled the whole group is
    SIGKILLed and reaped before the cancellation propagates. Raises ``OSError`` if it cannot start.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env) if env is not None else None,
        start_new_session=True,
    )
    try:
        out, err = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        # reap it; shielded so a second cancellation cannot leave a zombie behind
        await asyncio.shield(proc.wait())
        raise
    assert proc.returncode is not None
    return Captured(
        proc.returncode,
        out.decode("utf-8", errors="replace"),
        err.decode("utf-8", errors="replace"),
    )


# -- processes by /proc (Linux): identity across an executor restart, process-group membership --------


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (stat field 22): with the pid it names one
    process for good, since a pid can be reused but not at the same start time."""
    fields = stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    return int(fields[19])


def same_process(pid: int, ticks: int | None) -> bool:
    """Whether ``pid`` is still the (living, non-zombie) process that started at ``ticks``."""
    fields = stat_fields(pid)
    if fields is None or fields[0] in (b"Z", b"X"):
        return False
    return ticks is None or (len(fields) >= 20 and int(fields[19]) == ticks)


def group_members(pgid: int) -> list[tuple[int, int]]:
    """(pid, start ticks) of the living processes in process group ``pgid`` (empty without /proc)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    members = []
    for name in entries:
        if not name.isdigit():
            continue
        fields = stat_fields(int(name))
        if fields is None or len(fields) < 20 or fields[0] in (b"Z", b"X"):
            continue
        if int(fields[2]) == pgid:
            members.append((int(name), int(fields[19])))
    return members


def group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is still in process group ``pgid``.

    Signal 0 first: an empty group (the usual case once a job has ended) answers ESRCH at the cost
    of one system call, where scanning /proc costs a read per process on the machine (a quarter
    of the executor's CPU at a hundred short jobs a second). Signal 0 counts zombies, so a group
    that answers is confirmed from /proc.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not os.path.isdir("/proc"):  # no procfs: trust signal 0
        return True
    return bool(group_members(pgid))


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
