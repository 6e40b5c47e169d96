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
no file, and the executor knows it sent the SIGKILL.

Cheap to start, since every rank of every local job pays for it: built-in modules only (``os``,
``_signal``, ``sys``), the job started with ``os.posix_spawnp`` and reaped with ``os.waitpid``,
and the two small JSON records written by hand (``json`` only on the rare error path). With
``-I -S`` that is ~8 ms of CPU; with ``subprocess`` and ``json`` imported it was ~29 ms, the
largest cost of a short local job.
"""

from __future__ import annotations

import os
import sys

try:  # the C module under ``signal``: the same functions without importing enum (~4 ms)
    import _signal as signal
except ImportError:  # not CPython
    import signal

SUPERVISED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _record(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _record_error(path: str, message: str) -> None:
    import json  # only here: its import costs more than the rest of this process

    _record(path, json.dumps({"error": message}))


def _record_self(exit_file: str) -> None:
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    ticks = int(stat[stat.rfind(b")") + 2 :].split()[19])  # field 22: start time since boot
    base = exit_file[: -len(".exit")] if exit_file.endswith(".exit") else exit_file
    _record(base + ".pid", f'{{"pid": {os.getpid()}, "start_ticks": {ticks}}}')


def _close_on_exec_beyond_stdio() -> None:
    """What ``subprocess``'s close_fds did: the job inherits only stdin, stdout and stderr, even
    if this process was handed more (the executor hands it none)."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in fds:
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the listing's own descriptor, closed again


def _ignore(signum: int, frame: object) -> None:
    """A handler (not SIG_IGN, which exec would pass on to the job): the job gets the signal from
    the group; this process stays to record the job's end."""


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: supervise.py EXIT_FILE -- ARGV...", file=sys.stderr)
        return 2
    exit_file, command = argv[0], argv[2:]
    for sig in SUPERVISED_SIGNALS:
        signal.signal(sig, _ignore)
    try:
        _record_self(exit_file)
    except (OSError, ValueError, IndexError):
        pass  # no procfs: the executor's own pid file is all there is
    _close_on_exec_beyond_stdio()
    try:
        # the job gets stdin from /dev/null and the default action of the signals handled here
        # (a handled signal is reset by exec anyway; setsigdef says so)
        pid = os.posix_spawnp(
            command[0],
            command,
            os.environ,
            file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)],
            setsigdef=SUPERVISED_SIGNALS,
        )
    except FileNotFoundError:
        _record_error(exit_file, f"command not found: {command[0]}")
        return 127
    except PermissionError:
        _record_error(exit_file, f"command not executable: {command[0]}")
        return 126
    except OSError as exc:
        _record_error(exit_file, f"cannot start {command[0]}: {exc}")
        return 126
    _, status = os.waitpid(pid, 0)  # retried by Python when a signal interrupts it (PEP 475)
    returncode = os.waitstatus_to_exitcode(status)  # negative: the signal that ended it
    _record(exit_file, f'{{"returncode": {returncode}}}')
    return returncode if returncode >= 0 else 128 - returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
