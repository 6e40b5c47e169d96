"""A rank's tiny supervisor: run the job's argv, then write how it ended to a file.

    python -I -S .../supervise.py EXIT_FILE [--cgroup DIR] [--user UID:GID] -- ARGV...
    (or python -m trainyard_executor.supervise)

The local backend starts every rank under this, as the leader of the rank's own process group,
with stdout and stderr already pointing at the rank's log files. An executor that restarts cannot
wait() on processes it did not spawn; it polls them, tails their log files, and reads their exit
status from EXIT_FILE, which this writes atomically as JSON: ``{"returncode": N}`` (negative: the
signal that ended the job; with ``cpu_seconds`` and ``max_rss_kib``, what it used, from ``wait4``,
and ``"signalled": true`` when a stop signal reached this process while the job lived) or
``{"error": "command not found: ..."}``. Before it starts the job it
writes its own pid and start time next to it (EXIT_FILE with ``.pid`` for ``.exit``), so an
executor killed the moment after spawning it still finds the rank.

The executor signals the whole group; the job decides what SIGTERM means (its default disposition
is restored on exec), while this process only records the end. SIGKILL takes both: then there is
no file, and the executor knows it sent the SIGKILL. A SIGTERM (SIGINT, SIGHUP) that arrives before
the job exists (a cancel in this process's first milliseconds) is kept and sent to the job the
moment it is spawned, so it is not lost and the job is not SIGKILLed at the grace deadline instead.

``--cgroup DIR``: this process joins that cgroup v2 directory before it starts the job, so the job
and everything it starts (a ``setsid()`` child included) can be killed as one. ``--user UID:GID``:
the job runs as that user with no supplementary groups (fork, drop, exec; posix_spawn cannot change
the user), while this process stays as it is, to write the records the job must not touch.

Cheap to start, since every rank of every local job pays for it: built-in modules only (``os``,
``_signal``, ``sys``), the job started with ``os.posix_spawnp`` and reaped with ``os.waitpid``,
and the two small JSON records written by hand (``json`` only on the rare error path). With
``-I -S`` that is ~8 ms of CPU; with ``subprocess`` and ``json`` imported it was ~29 ms, the
largest cost of a short local job.
"""

from __future__ import annotations

import os
import sys

# os.execvpe imports warnings lazily (os.get_exec_path): in the child, after the drop to the job's
# uid, the supervisor's own stdlib may be out of that user's reach (this machine's Python lives under
# /root, 0700), and the exec failed as "command not executable". Imported here, as root.
import warnings  # noqa: F401

try:  # the C module under ``signal``: the same functions without importing enum (~4 ms)
    import _signal as signal
except ImportError:  # not CPython
    import signal

SUPERVISED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
JOB_DEFAULT_SIGNALS = (*SUPERVISED_SIGNALS, signal.SIGPIPE, signal.SIGXFSZ)
"""At their default in the job: Python ignores SIGPIPE and SIGXFSZ at start-up, and an ignored
signal stays ignored across exec, so a job's ``yes | head`` or file-size limit behaved unlike the
same command from a shell."""
SPAWN_DELAY_VAR = "TRAINYARD_TEST_SUPERVISOR_SPAWN_DELAY"
"""Test hook: seconds (at most 10) to wait before starting the job, which makes the window
before the spawn wide enough for a test to land a signal in it. Only delays the job's own start."""
EXIT_DELAY_VAR = "TRAINYARD_TEST_SUPERVISOR_EXIT_DELAY"
"""Test hook: seconds (at most 10) to stay after the job's end is recorded, which makes the window
between a job's own end and the executor hearing of it wide enough for a test to cancel in it."""

_job_pid = 0
"""The job's pid once it exists; signals that came before it are kept in ``_early``."""
_early: list[int] = []
_told = False
"""A supervised signal came while the job existed: the executor stopped it (the group got it)."""


def _record(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
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


def _remember(signum: int, frame: object) -> None:
    """A handler (not SIG_IGN, which exec would pass on to the job). Once the job exists it gets
    the signal from the group and this process only stays to record the job's end; a signal that
    came before the job existed is kept and passed on to it the moment it does."""
    global _told
    if not _job_pid:
        _early.append(signum)
    else:
        _told = True


def _run_pending_handlers() -> None:
    """Calling a Python function runs the handlers of signals already caught (CPython checks for
    them on entry), so after the block none is left to run late and be taken for a later one."""


def _spawn(command: list[str], user: tuple[int, int] | None) -> int:
    """Start the job as this process's child, in its process group (and cgroup), with stdin from
    /dev/null, the supervised signals back at their default and unblocked, and as ``user``
    (uid, gid, no supplementary groups) when given. Raises OSError when it cannot start.

    Signals are blocked around the spawn: one caught before the block was for a job that did not
    exist yet and is passed on; one still pending at the end of the spawn is taken to have reached
    the job through the group (the spawn is nearly all of that window)."""
    global _job_pid
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISED_SIGNALS)
    try:
        _run_pending_handlers()
        early = set(_early) | (signal.sigpending() & set(SUPERVISED_SIGNALS))
        if user is None:
            pid = os.posix_spawnp(
                command[0],
                command,
                os.environ,
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)],
                setsigdef=JOB_DEFAULT_SIGNALS,
                setsigmask=old_mask,
            )
        else:
            pid = _fork_exec_as(command, user, old_mask)
        _job_pid = pid
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    for signum in sorted(early):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            break
    return pid


def _fork_exec_as(command: list[str], user: tuple[int, int], mask: object) -> int:
    """fork, drop to ``user``, exec: posix_spawn cannot change the user. An exec error travels
    back through a close-on-exec pipe (empty when the exec succeeded), as in ``subprocess``."""
    uid, gid = user
    errors_r, errors_w = os.pipe()  # not inheritable: the exec closes the writing end
    pid = os.fork()
    if pid == 0:  # the child: nothing here may return into the supervisor's code
        code = 0
        try:
            os.close(errors_r)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            for sig in JOB_DEFAULT_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.execvpe(command[0], command, os.environ)
        except OSError as exc:
            code = exc.errno or 1
        except BaseException:
            code = 1
        try:
            os.write(errors_w, str(code).encode())
        finally:
            os._exit(127)
    os.close(errors_w)
    try:
        failed = os.read(errors_r, 32)
    finally:
        os.close(errors_r)
    if failed:
        os.waitpid(pid, 0)
        code = int(failed)
        raise OSError(code, os.strerror(code))  # FileNotFoundError, PermissionError, ... by errno
    return pid


def _join_cgroup(path: str) -> None:
    """Move this process (and so the job it starts) into the attempt's cgroup."""
    fd = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY)
    try:
        os.write(fd, str(os.getpid()).encode())
    finally:
        os.close(fd)


def _parse_user(text: str) -> tuple[int, int]:
    uid, _, gid = text.partition(":")
    return int(uid), int(gid or uid)


def _parse(argv: list[str]) -> tuple[str, str | None, tuple[int, int] | None, list[str]] | None:
    """EXIT_FILE [--cgroup DIR] [--user UID:GID] -- ARGV...; None when malformed."""
    if len(argv) < 3:
        return None
    exit_file, rest = argv[0], argv[1:]
    cgroup: str | None = None
    user: tuple[int, int] | None = None
    while rest and rest[0] != "--":
        if len(rest) < 2 or rest[0] not in ("--cgroup", "--user"):
            return None
        if rest[0] == "--cgroup":
            cgroup = rest[1]
        else:
            try:
                user = _parse_user(rest[1])
            except ValueError:
                return None
        rest = rest[2:]
    if len(rest) < 2:
        return None
    return exit_file, cgroup, user, rest[1:]


def _test_delay(variable: str) -> None:
    delay = os.environ.get(variable)
    if delay:
        import time

        time.sleep(min(max(float(delay), 0.0), 10.0))


def main(argv: list[str]) -> int:
    parsed = _parse(argv)
    if parsed is None:
        print("usage: supervise.py EXIT_FILE [--cgroup DIR] [--user UID:GID] -- ARGV...", file=sys.stderr)
        return 2
    exit_file, cgroup, user, command = parsed
    for sig in SUPERVISED_SIGNALS:
        signal.signal(sig, _remember)
    try:
        _record_self(exit_file)
    except (OSError, ValueError, IndexError):
        pass  # no procfs: the executor's own pid file is all there is
    if cgroup is not None:
        try:
            _join_cgroup(cgroup)
        except OSError as exc:  # never run a job outside the cgroup the executor counts on
            _record_error(exit_file, f"cannot join the attempt's cgroup {cgroup}: {exc}")
            return 126
    _close_on_exec_beyond_stdio()
    _test_delay(SPAWN_DELAY_VAR)
    try:
        pid = _spawn(command, user)
    except FileNotFoundError:
        _record_error(exit_file, f"command not found: {command[0]}")
        return 127
    except PermissionError:
        _record_error(exit_file, f"command not executable: {command[0]}")
        return 126
    except OSError as exc:
        _record_error(exit_file, f"cannot start {command[0]}: {exc}")
        return 126
    # wait4: the job's status and what it used (with the descendants it reaped); retried by Python
    # when a signal interrupts it (PEP 475)
    _, status, usage = os.wait4(pid, 0)
    # a stop that reached the group before the job's end was heard has run its handler by now;
    # one that comes later is for a job that had ended on its own (the executor reports that end
    # as it was, not as a stop: supervision.ended_on_its_own)
    _run_pending_handlers()
    told = ', "signalled": true' if _told else ""
    returncode = os.waitstatus_to_exitcode(status)  # negative: the signal that ended it
    cpu = usage.ru_utime + usage.ru_stime
    # ru_maxrss: KiB on Linux, the largest resident set of the job or any descendant it reaped
    used = f'"cpu_seconds": {cpu:.3f}, "max_rss_kib": {usage.ru_maxrss}'
    _record(exit_file, f'{{"returncode": {returncode}, {used}{told}}}')
    _test_delay(EXIT_DELAY_VAR)
    return returncode if returncode >= 0 else 128 - returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
