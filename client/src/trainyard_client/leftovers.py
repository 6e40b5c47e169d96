"""Every process the embedded stack started, remembered, so none outlives it.

A job's processes run in their own session (so that cancelling a job signals only that job), and a
service that is killed leaves its children to init: once that happens they are no longer below
any process of the stack. So the stack keeps a list of what it has seen below its services, with
each process's start time (psutil checks it, so a recycled pid is never taken for one of ours), and
when every service has stopped it kills whatever on that list still lives, with its process
group, as a last resort, and says which.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

KILL_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class Leftover:
    """A process still running after the stack's services stopped (then killed)."""

    pid: int
    command: str


def _command(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline()) or process.name()
    except psutil.Error:
        return "?"


def _living(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


class Descendants:
    """The processes seen below some roots, kept after they are orphaned."""

    def __init__(self) -> None:
        self._seen: dict[int, psutil.Process] = {}

    def scan(self, roots: Iterable[int]) -> None:
        """Remember every living process below ``roots``; forget the ones that have ended."""
        self._seen = {pid: p for pid, p in self._seen.items() if _living(p)}
        for pid in roots:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(pid).children(recursive=True):
                    self._seen.setdefault(child.pid, child)

    def living(self) -> list[psutil.Process]:
        return [p for p in self._seen.values() if _living(p)]

    def kill_living(self) -> list[Leftover]:
        """SIGKILL every remembered process that still runs, and its process group."""
        alive = self.living()
        found = [Leftover(p.pid, _command(p)) for p in alive]
        own_group = os.getpgrp()
        for process in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                group = os.getpgid(process.pid)
                if group != own_group:
                    os.killpg(group, signal.SIGKILL)
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(alive, timeout=KILL_WAIT_SECONDS)
        self._seen.clear()
        return found
