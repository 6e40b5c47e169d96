"""The local backend's fork server: one per executor, a rank supervisor per fork.

    python -I -S .../forkserver.py REQUEST_FD EVENT_FD

Starting a Python interpreter for every rank's supervisor (``supervise.py``) costs 8-15 ms of CPU,
the largest cost of a short local job (docs/performance.md, "Where a local job's time goes"). This
process starts once, with what the supervisor needs already imported, and forks a child per rank
that becomes that rank's supervisor: ``supervise.main`` runs in the child exactly as it runs in
its own interpreter, so what a rank does (its process group and session, cgroup, user, the job's
spawn, the exit records) is unchanged.

Both descriptors are ``SOCK_SEQPACKET`` sockets (one message per request, descriptors alongside).
A request is JSON ``{"id", "argv", "cwd", "env", "record"}`` with two descriptors, the rank's
stdout and stderr; the answer on the event socket is ``{"id", "pid", "start_ticks"}`` once the child
leads its own session, or ``{"id", "errno", "error"}`` when it could not start.

``record`` is the rank's pid record (the ``.pid`` the supervisor writes next to its exit file), and
the child's first act is to *claim* it: its pid written to a file of its own, hard-linked to
``record`` (``link`` fails if anything is there, a symlink included). If the link fails, the child
ends without running anything: the executor gave the request up and claimed the record itself
(the fork server died or was frozen before it answered, or the attempt was cancelled), so a
request the executor no longer waits for never runs a job, and one that did run is found by its
record. Exactly one of the two claims wins. When a child ends, this
process reaps it and says ``{"exited": pid, "returncode": N}``. It ends when the executor closes
the request socket; children still running then live on (their exits are read from their exit
files, as an executor that restarted reads them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import socket
import sys
from typing import Any

try:  # the C module under ``signal``: the same functions without importing enum
    import _signal as signal
except ImportError:  # not CPython
    import signal

MAX_REQUEST = 256 * 1024
"""A request's largest size (argv and env); a larger one is refused and the rank started the old
way, as its own interpreter."""
_SUPERVISOR_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


def _load_supervisor() -> object:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "supervise.py")
    spec = importlib.util.spec_from_file_location("trainyard_rank_supervisor", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rfind(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _claim(record: str) -> None:
    """Hard-link this process's pid record at ``record``; FileExistsError when something is there
    (the executor's own claim: it gave this request up)."""
    ticks = _start_ticks(os.getpid())
    text = f'{{"pid": {os.getpid()}, "start_ticks": {"null" if ticks is None else ticks}}}'
    mine = f"{record}.{os.getpid()}.claim"
    fd = os.open(mine, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    try:
        os.link(mine, record)
    finally:
        os.unlink(mine)


def _become_rank(request: dict[str, Any], out: int, err: int, keep_out: list[int], ready: int) -> int:
    """In the child: the rank's pid record claimed, a session of its own, stdio, cwd and env as the
    rank's, then say so on ``ready`` (empty on success, "ERRNO reason" otherwise) and supervise."""
    signal.set_wakeup_fd(-1)
    for sig in _SUPERVISOR_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    for fd in keep_out:
        os.close(fd)
    try:
        try:
            _claim(request["record"])
        except FileExistsError as exc:
            raise FileExistsError(
                exc.errno, "its pid record exists: the executor gave the request up"
            ) from exc
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        for source, target in ((null, 0), (out, 1), (err, 2)):
            os.dup2(source, target)
        for fd in {null, out, err} - {0, 1, 2}:
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
    except BaseException as exc:  # whatever it was, the job does not run and the parent hears why
        errno = getattr(exc, "errno", None) or 0
        os.write(ready, f"{errno} {getattr(exc, 'strerror', None) or exc}".encode())
        return 126
    os.close(ready)
    return int(SUPERVISOR.main(request["argv"]))  # type: ignore[attr-defined]


def _fork_rank(request: dict[str, Any], fds: list[int], keep_out: list[int]) -> dict[str, Any]:
    """Fork the rank's supervisor; the caller closes ``fds`` (the child has its own copies)."""
    out, err = fds
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 125
        try:
            os.close(ready_r)
            code = _become_rank(request, out, err, keep_out, ready_w)
        finally:
            os._exit(code & 0xFF)
    os.close(ready_w)
    try:
        failed = os.read(ready_r, 4096)  # empty: the child closed it, set up (or it died)
    finally:
        os.close(ready_r)
    if failed:
        errno, _, error = failed.decode(errors="replace").partition(" ")
        return {"id": request["id"], "errno": int(errno), "error": error}
    return {"id": request["id"], "pid": pid, "start_ticks": _start_ticks(pid)}


def _request_id(message: bytes) -> int | None:
    try:
        request = json.loads(message)
    except ValueError:
        return None
    return request.get("id") if isinstance(request, dict) and isinstance(request.get("id"), int) else None


def _parse_request(message: bytes, fds: list[int]) -> dict[str, Any]:
    """The request, checked before anything forks: a malformed one is answered, never half-run."""
    request = json.loads(message)
    if not isinstance(request, dict) or not isinstance(request.get("id"), int):
        raise ValueError("a JSON object with an integer id expected")
    if len(fds) != 2:
        raise ValueError(f"2 descriptors (stdout, stderr) expected, {len(fds)} came")
    argv, env = request.get("argv"), request.get("env")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise ValueError("argv: a list of strings expected")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ValueError("env: an object of strings expected")
    for key in ("cwd", "record"):
        if not isinstance(request.get(key), str) or not os.path.isabs(request[key]):
            raise ValueError(f"{key}: an absolute path expected")
    return request


def _reap(events: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        said = {"exited": pid, "returncode": os.waitstatus_to_exitcode(status)}
        events.send(json.dumps(said).encode())


def _answer(requests: socket.socket, events: socket.socket, keep_out: list[int]) -> bool:
    """One request; False once the executor has closed its end."""
    message, fds, _flags, _addr = socket.recv_fds(requests, MAX_REQUEST, 2)
    try:
        if not message:
            return False
        try:
            request = _parse_request(message, fds)
            answer = _fork_rank(request, fds, keep_out)
        except (ValueError, OSError) as exc:
            answer = {
                "id": _request_id(message),
                "errno": getattr(exc, "errno", None) or 0,
                "error": str(exc),
            }
    finally:
        for fd in fds:  # here and only here, once: the child has its own copies
            os.close(fd)
    events.send(json.dumps(answer).encode())
    return True


def serve(requests: socket.socket, events: socket.socket) -> None:
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # a handler, so the wake-up fd hears it
    keep_out = [requests.fileno(), events.fileno(), wake_r, wake_w]
    while True:
        readable, _, _ = select.select([requests.fileno(), wake_r], [], [])
        if wake_r in readable:
            while True:
                try:
                    if not os.read(wake_r, 512):
                        break
                except BlockingIOError:
                    break
        _reap(events)
        if requests.fileno() in readable and not _answer(requests, events, keep_out):
            return


SUPERVISOR = _load_supervisor()

if __name__ == "__main__":
    request_fd, event_fd = int(sys.argv[1]), int(sys.argv[2])
    serve(
        socket.socket(fileno=request_fd),
        socket.socket(fileno=event_fd),
    )
