"""One process's line of /proc (Linux), read without following anything a job controls."""

from __future__ import annotations


def stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/<pid>/stat after "(comm)": [state, ppid, pgrp, ...]; None if no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp ..." — comm may contain spaces and parentheses
    return stat[stat.rfind(b")") + 2 :].split()
