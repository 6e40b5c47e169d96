"""A rank's tiny supervisor: run the job's argv, then write how it ended to a file.

    python -I -S .../supervise.py EXIT_FILE -- ARGV...      (or python -m trainyard_executor.supervise)

The local backend starts every rank under this, as the leader of the rank's own process group,
with stdout and stderr already pointing at the rank's log files. An executor that restarts cannot
wait() on processes it did not spawn; it polls them, tails their log files, and reads their exit
status from EXIT_FILE, which this writes atomically as JSON: ``{"returncode": N}`` (negative: the
signal that ended the job) or ``{"error": "command not found: ..."}``. Before it starts the job it
writes its own pid and start time next to it (EXIT_FILE with ``.pid`` for ``.exit``), so an
executor killed the moment after spawning it still finds the rank.

The executor signals the whole group; the job decides what SIGTERM means (its default disposition
is restored on exec), while this process only records the end. SIGKILL takes both: then there is
no file, and the executor knows it sent the SIGKILL. Standard library only, no package imports, so
it starts in a few milliseconds with ``-I -S``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys


def _record(path: str, status: dict[str, object]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(status, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _record_self(exit_file: str) -> None:
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    ticks = int(stat[stat.rfind(b")") + 2 :].split()[19])  # field 22: start time since boot
    base = exit_file[: -len(".exit")] if exit_file.endswith(".exit") else exit_file
    _record(base + ".pid", {"pid": os.getpid(), "start_ticks": ticks})


def _ignore(signum: int, frame: object) -> None:
    """A handler (not SIG_IGN, which exec would pass on to the job): the job gets the signal from
    the group; this process stays to record the job's end."""


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: supervise.py EXIT_FILE -- ARGV...", file=sys.stderr)
        return 2
    exit_file, command = argv[0], argv[2:]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _ignore)
    try:
        _record_self(exit_file)
    except (OSError, ValueError, IndexError):
        pass  # no procfs: the executor's own pid file is all there is
    try:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        _record(exit_file, {"error": f"command not found: {command[0]}"})
        return 127
    except PermissionError:
        _record(exit_file, {"error": f"command not executable: {command[0]}"})
        return 126
    except OSError as exc:
        _record(exit_file, {"error": f"cannot start {command[0]}: {exc}"})
        return 126
    returncode = child.wait()  # retried by Python when a signal interrupts it (PEP 475)
    _record(exit_file, {"returncode": returncode})
    return returncode if returncode >= 0 else 128 - returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
