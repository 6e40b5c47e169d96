"""A local job killed by the kernel's OOM killer, named as such where that can be known.

Without the executor's own memory limit (TRAINYARD_EXECUTOR_LOCAL_MEMORY_LIMIT) nothing stops a
local job but the kernel, and its OOM killer sends SIGKILL without telling the process group why.
What can be known:

- where the attempt's cgroup v2 directory has the memory controller, its ``memory.events`` counts
  ``oom_kill``: the kills of its own processes (a fresh cgroup per attempt, so every kill counted
  there is this attempt's): the failure is then "killed: out of memory";
- elsewhere (no cgroup, or one without the memory controller: this machine, cgroup v1) only the
  machine's count, ``/proc/vmstat``'s ``oom_kill``: if it rose while a rank that died of SIGKILL
  ran, the reason says so as a likelihood, since another process of the machine may have been the
  one killed.

Pure but for reading those two kernel files.
"""

from __future__ import annotations

import signal
from pathlib import Path

OOM_KILLED = "killed: out of memory"


def _counter(text: str, key: str) -> int | None:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None


def cgroup_oom_kills(cgroup: Path | None) -> int | None:
    """``oom_kill`` of the cgroup's ``memory.events``; None without one (no cgroup, or the memory
    controller is not enabled on it)."""
    if cgroup is None:
        return None
    try:
        return _counter((cgroup / "memory.events").read_text(), "oom_kill")
    except OSError:
        return None


def machine_oom_kills() -> int | None:
    """The kernel's OOM kills on this machine since boot (Linux >= 4.13); None if not told."""
    try:
        return _counter(Path("/proc/vmstat").read_text(), "oom_kill")
    except OSError:
        return None


def name_oom(rc: int | None, why: str, in_cgroup: int | None, on_machine: int | None) -> str:
    """The failure reason ``why`` of a rank that ended with ``rc``, with the OOM killer named:
    ``in_cgroup`` kills counted in the attempt's cgroup, ``on_machine`` kills on the machine while
    it ran (each None when not known)."""
    sigkill = rc == -signal.SIGKILL
    if in_cgroup:
        if sigkill:
            return f"{OOM_KILLED} (the kernel's OOM killer; memory.events oom_kill {in_cgroup})"
        return f"{why}; the kernel's OOM killer killed {in_cgroup} of its processes (out of memory)"
    if in_cgroup is None and sigkill and on_machine:
        return (
            f"{why}; the kernel's OOM killer killed {on_machine} process(es) on this machine while it "
            "ran: out of memory?"
        )
    return why
