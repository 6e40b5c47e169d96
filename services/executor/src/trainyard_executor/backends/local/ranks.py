"""The ranks of a local attempt as its pid file records them, and how their exits read."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainyard_contracts.records import AttemptUsage

from .._proc import group_alive, group_members, same_process
from ..base import OutcomeKind
from ..jobfiles import open_private
from .forkserver_client import claim_record

log = logging.getLogger(__name__)
META_DIR = ".trainyard"
"""In the attempt's work dir: rank-N.stdout/.stderr/.exit and the log cursor."""
GROUP_POLL_S = 0.05
KILL_WAIT_S = 5.0


def fmt_s(seconds: float) -> str:
    return f"{seconds:g}s"


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_reason(rc: int | None) -> str:
    if rc is None:
        return "exit status unknown"
    if rc < 0:
        return f"killed by signal {signal_name(-rc)}"
    return f"exit code {rc}"


@dataclass
class Rank:
    """One rank's process group: its supervisor (the group leader) and the job's argv under it."""

    rank: int
    local_rank: int
    stdout: Path
    stderr: Path
    exit_file: Path
    pid: int | None = None
    start_ticks: int | None = None
    exited: asyncio.Future[Any] | None = field(default=None, repr=False)
    proc: asyncio.subprocess.Process | None = field(default=None, repr=False)
    forked_returncode: int | None = None
    """The supervisor's exit code as the fork server reaped it (a forked rank has no ``proc``)."""
    killed: bool = False
    """We SIGKILLed its group while the supervisor lived: it could write no exit file."""

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "local_rank": self.local_rank,
            "stdout": str(self.stdout),
            "stderr": str(self.stderr),
            "exit_file": str(self.exit_file),
            "pid": self.pid,
            "start_ticks": self.start_ticks,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Rank:
        rank = cls(
            rank=int(data["rank"]),
            local_rank=int(data["local_rank"]),
            stdout=Path(data["stdout"]),
            stderr=Path(data["stderr"]),
            exit_file=Path(data["exit_file"]),
            pid=data.get("pid"),
            start_ticks=data.get("start_ticks"),
        )
        if rank.pid is None:
            # the executor died between asking for the rank and recording it: the supervisor
            # recorded itself, or the record is claimed now, so that a request still queued at
            # the fork server when the executor died never runs the rank (its child's claim fails)
            try:
                recorded = claim_record(rank.exit_file.with_suffix(".pid"))
            except OSError:  # unreadable, or its folder gone: not started, as before
                recorded = None
            if recorded is not None:
                rank.pid, rank.start_ticks = recorded
        return rank

    def note_forked_exit(self, exited: asyncio.Future[int | None]) -> None:
        """The fork server reaped the supervisor (a done callback of its exit)."""
        if not exited.cancelled() and exited.exception() is None:
            self.forked_returncode = exited.result()

    def _exit_record(self) -> Any:
        try:
            return json.loads(self.exit_file.read_text())
        except (OSError, ValueError):
            return None

    def ended_on_its_own(self) -> bool:
        """Its job exited 0 before any stop reached the group: the supervisor recorded that end,
        and no signal it got while the job lived (``signalled``)."""
        data = self._exit_record()
        return isinstance(data, dict) and data.get("returncode") == 0 and not data.get("signalled")

    def status(self) -> tuple[int | None, str | None]:
        """(exit code, error) once the rank has ended: from its supervisor's exit file, else
        from what we saw (our own child's status, our SIGKILL), else unknown."""
        data = self._exit_record()
        if isinstance(data, dict):
            if data.get("error"):
                return None, str(data["error"])
            if isinstance(data.get("returncode"), int):
                return int(data["returncode"]), None
        if self.proc is not None and self.proc.returncode is not None:
            return self.proc.returncode, None
        if self.forked_returncode is not None:
            return self.forked_returncode, None
        if self.killed:
            return -signal.SIGKILL, None
        return None, "ended while the executor was away; its exit status is unknown"

    def usage(self) -> AttemptUsage | None:
        """What the rank's job used, from its supervisor's exit file (None: not recorded, e.g.
        the rank was SIGKILLed with its supervisor)."""
        try:
            data = json.loads(self.exit_file.read_text())
            cpu, rss = float(data["cpu_seconds"]), int(data["max_rss_kib"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if cpu < 0 or rss < 0:
            return None
        return AttemptUsage(cpu_seconds=cpu, peak_memory_bytes=rss * 1024)

    def failed(self) -> bool:
        rc, error = self.status()
        return error is not None or rc != 0


def is_ours(rank: Rank) -> bool:
    """Whether the rank's group is still the one we started (a pid is only reused once the group
    is empty; then it may name a stranger's group, which must not be signalled)."""
    if rank.pid is None:
        return False
    if rank.proc is not None and rank.proc.returncode is None:
        return True  # our child, not reaped yet: its pid cannot have been reused
    if same_process(rank.pid, rank.start_ticks):
        return True
    # the leader is gone; stragglers it left started after it, a stranger's group only later
    members = group_members(rank.pid)
    return bool(members) and rank.start_ticks is not None and all(t >= rank.start_ticks for _, t in members)


def stop_that_counted(kind: OutcomeKind | None, ranks: Sequence[Rank]) -> OutcomeKind | None:
    """How a stopped attempt ended: ``kind`` (cancelled, timed out, ...), or None (as it ended on
    its own) for a cancel that came after every rank's job had already exited 0, which the executor
    hears of only a poll later. A shutdown then reports the work as done instead of handing it back
    to run again; a job that exits 0 once told to stop is still cancelled (the record says it was
    told)."""
    if kind == "cancelled" and ranks and all(rank.ended_on_its_own() for rank in ranks):
        return None
    return kind


def lingers(rank: Rank) -> bool:
    """The rank ended but left processes in its group."""
    return rank.pid is not None and group_alive(rank.pid) and is_ours(rank)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = open_private(tmp)
    with open(fd, "w") as f:
        f.write(json.dumps(data))
    os.replace(tmp, path)


def user_of(state: Mapping[str, Any]) -> tuple[int, int] | None:
    user = state.get("user")
    return (int(user[0]), int(user[1])) if isinstance(user, list) and len(user) == 2 else None


def ranks_usage(ranks: Sequence[Rank]) -> AttemptUsage | None:
    """What an attempt's ranks used together (those whose use was recorded; None: none was)."""
    total: AttemptUsage | None = None
    for rank in ranks:
        used = rank.usage()
        if used is not None:
            total = used if total is None else total.plus(used)
    return total
