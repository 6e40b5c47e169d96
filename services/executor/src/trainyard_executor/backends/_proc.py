"""Small helpers to run auxiliary commands (git, pip, venv) as cancellable asyncio subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


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
