"""The executor's side of the fork server (``trainyard_executor/forkserver.py``): start it once,
ask it for a rank, hear when the rank's supervisor ends.

A rank it forks is not the executor's child: its end comes as an event from the fork server (or,
if the fork server is gone, is seen by polling the pid, as for a rank adopted after a restart).

Exactly once: a request that was never sent (the fork server could not start, is known to be gone,
or its socket did not take the request) raises :class:`ForkServerUnavailable`, and the caller
starts the rank as its own interpreter. Once a request is sent there is no such way back: the
answer is awaited as long as the fork server lives, however slow (or frozen) it is. If it ends
without answering, or the caller is cancelled while waiting, the executor claims the rank's pid
record itself (the same hard-link claim the fork server's child makes first, see forkserver.py):
if its claim wins, the child can never run the job and :class:`RankNotStarted` says so; if the
child's won, the rank is adopted by its recorded pid (or, for a cancelled caller, killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._proc import same_process

log = logging.getLogger(__name__)
SCRIPT = Path(__file__).resolve().parent.parent.parent / "forkserver.py"
MAX_REQUEST = 256 * 1024  # forkserver.MAX_REQUEST: that module runs alone under -I -S
SEND_TIMEOUT_S = 5.0
SLOW_ANSWER_S = 30.0
"""Waiting longer than this for an answer is logged (and the wait goes on while the fork server
lives: giving a sent request up early is what could run a job twice)."""
POLL_S = 0.1


class ForkServerUnavailable(Exception):
    """The request was never sent (the fork server could not take it): start the rank the old way."""


class RankNotStarted(OSError):
    """A sent request the fork server will never answer, whose rank was provably not started: the
    executor's claim of its pid record came first, so the child (if it is ever forked) ends
    without running anything. The attempt fails with this reason."""

    def __str__(self) -> str:
        return str(self.strerror)


_Answer = tuple[dict[str, Any], "asyncio.Future[int | None] | None"]


@dataclass(frozen=True)
class ForkedRank:
    pid: int
    start_ticks: int | None
    exited: asyncio.Future[int | None]
    """The supervisor's exit code (as ``wait`` says it; None when the fork server was gone and
    the end was seen by polling)."""


class ForkServer:
    def __init__(self, python: str = sys.executable) -> None:
        self._python = python
        self._process: subprocess.Popen[bytes] | None = None
        self._requests: socket.socket | None = None
        self._events: socket.socket | None = None
        self._ids = itertools.count(1)
        self._answers: dict[int, asyncio.Future[_Answer]] = {}
        self._exits: dict[int, tuple[asyncio.Future[int | None], int | None]] = {}
        self._start_lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()
        self._broken = False
        """No request is sent any more (requests already sent are still answered)."""
        self._lost = False
        """Nothing more will be heard from it: what waits on it is answered otherwise."""

    async def _ensure_started(self) -> None:
        if self._requests is not None:
            return
        async with self._start_lock:
            if self._requests is not None:
                return
            ours_req, theirs_req = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ours_ev, theirs_ev = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                # not an asyncio child: nothing awaits its end but close(), and a test's loop may
                # be gone by then
                fds = (theirs_req.fileno(), theirs_ev.fileno())
                self._process = await asyncio.to_thread(
                    subprocess.Popen,
                    [self._python, "-I", "-S", str(SCRIPT), *map(str, fds)],
                    pass_fds=fds,
                    stdin=subprocess.DEVNULL,
                    env={"PATH": os.defpath},  # none of the executor's own environment
                    start_new_session=True,  # signals to the executor's group are not for it
                )
            except BaseException:
                for s in (ours_req, ours_ev):
                    s.close()
                raise
            finally:
                theirs_req.close()
                theirs_ev.close()
            ours_req.setblocking(False)  # a full socket is waited on, not blocked on (the loop)
            ours_ev.setblocking(False)
            self._requests, self._events = ours_req, ours_ev
            asyncio.get_running_loop().add_reader(ours_ev.fileno(), self._on_events)

    async def spawn(
        self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], stdout: int, stderr: int
    ) -> ForkedRank:
        """A rank's supervisor (``supervise.main(argv)``, ``argv[0]`` its exit file) forked in its
        own session with these stdout/stderr descriptors (the caller keeps and closes its own).
        Raises ForkServerUnavailable when the request was not sent (start the rank the old way),
        RankNotStarted when it was sent but the fork server ended without answering and the rank
        provably did not start, OSError (its errno) when the child could not be set up."""
        if self._broken:
            raise ForkServerUnavailable("the fork server has ended")
        request_id = next(self._ids)
        record = cwd / pid_record(argv[0])  # as the supervisor, in cwd, names it
        request = {
            "id": request_id,
            "argv": list(argv),
            "cwd": str(cwd),
            "env": dict(env),
            "record": str(record),
        }
        message = json.dumps(request).encode()
        if len(message) > MAX_REQUEST:
            raise ForkServerUnavailable(f"request of {len(message)} bytes over {MAX_REQUEST}")
        try:
            await self._ensure_started()
        except OSError as exc:
            self._broken = True
            raise ForkServerUnavailable(f"cannot start the fork server: {exc}") from exc
        answer: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        self._answers[request_id] = answer
        try:
            await self._send(message, [stdout, stderr])
        except (OSError, TimeoutError) as exc:  # a SEQPACKET send is whole or nothing: not sent
            self._answers.pop(request_id, None)
            self._stop_sending(f"it did not take a request: {exc}")
            raise ForkServerUnavailable(str(exc)) from exc
        except BaseException:
            self._answers.pop(request_id, None)
            raise
        try:
            said, exited = await self._wait_answer(request_id, answer)
        except ForkServerUnavailable as gone:  # sent, and it will never answer
            return self._settle_unanswered(record, str(gone))
        except asyncio.CancelledError:
            self._answers.pop(request_id, None)
            self._give_up(record)
            raise
        if exited is None:
            raise OSError(int(said.get("errno") or 0), str(said.get("error")))
        return ForkedRank(int(said["pid"]), said.get("start_ticks"), exited)

    async def _send(self, message: bytes, fds: list[int]) -> None:
        """The request on the socket, waiting (at most SEND_TIMEOUT_S) while the socket is full."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SEND_TIMEOUT_S
        async with self._send_lock:  # one waiter on the socket's writability at a time
            while True:
                if self._requests is None or self._broken:
                    raise ConnectionError("the fork server has ended")
                try:
                    socket.send_fds(self._requests, [message], fds)
                    return
                except BlockingIOError:
                    pass
                writable = loop.create_future()
                fd = self._requests.fileno()
                loop.add_writer(fd, _wake, writable)
                try:
                    await asyncio.wait_for(writable, max(deadline - loop.time(), 0.0))
                except TimeoutError as exc:
                    raise TimeoutError(f"its request socket stayed full for {SEND_TIMEOUT_S:g}s") from exc
                finally:
                    loop.remove_writer(fd)

    async def _wait_answer(self, request_id: int, answer: asyncio.Future[_Answer]) -> _Answer:
        """As long as it takes: only the fork server's end (ForkServerUnavailable) stops it."""
        waited = 0.0
        while True:
            done, _ = await asyncio.wait({answer}, timeout=SLOW_ANSWER_S)
            if done:
                return answer.result()
            waited += SLOW_ANSWER_S
            pid = self._process.pid if self._process is not None else None
            log.warning(
                "the local fork server (pid %s) has not answered request %d in %gs; waiting while it lives",
                pid,
                request_id,
                waited,
            )

    def _settle_unanswered(self, record: Path, why: str) -> ForkedRank:
        """A sent request that will never be answered: adopt the rank if its child claimed its pid
        record first, else the claim is ours and the rank never runs."""
        started = claim_record(record)
        if started is None:
            raise RankNotStarted(
                errno.ECHILD,
                f"the local fork server ended before it answered ({why}); the rank was not started "
                f"and will not be (the executor claimed its pid record {record.name} first)",
            )
        pid, ticks = started
        log.warning("the local fork server ended before it answered (%s); adopting rank pid %d", why, pid)
        return ForkedRank(pid, ticks, asyncio.ensure_future(_poll_until_gone(pid, ticks)))

    def _give_up(self, record: Path) -> None:
        """The caller no longer waits (cancelled): the rank must not run unseen. Claim its record;
        if the child claimed it first, kill its group (the caller kills the ranks it knows)."""
        try:
            started = claim_record(record)
        except OSError as exc:
            log.warning("a cancelled rank start: %s", exc)
            return
        if started is not None and same_process(*started):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(started[0], signal.SIGKILL)

    def _on_events(self) -> None:
        assert self._events is not None
        while True:
            try:
                data = self._events.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                self._lose(f"its event socket failed: {exc}")
                return
            if not data:
                self._lose("it ended")
                return
            self._dispatch(json.loads(data))

    def _dispatch(self, said: dict[str, Any]) -> None:
        if "exited" in said:  # always after the answer for that pid: the fork server sends both
            waiting = self._exits.pop(int(said["exited"]), None)
            if waiting is not None and not waiting[0].done():
                waiting[0].set_result(int(said["returncode"]))
            return  # a child that failed to set up was never a rank: nothing waits on it
        exited: asyncio.Future[int | None] | None = None
        if "pid" in said:  # its exit may be the very next message: wait for it from now
            exited = asyncio.get_running_loop().create_future()
            self._exits[int(said["pid"])] = (exited, said.get("start_ticks"))
        answer = self._answers.pop(int(said.get("id") or 0), None)
        if answer is not None and not answer.done():
            answer.set_result((said, exited))

    def _stop_sending(self, why: str) -> None:
        if not self._broken:
            self._broken = True
            log.warning(
                "the local fork server takes no more requests (%s): ranks start as their own interpreters",
                why,
            )

    def _lose(self, why: str) -> None:
        """Nothing more will come from it: pending requests are settled by their pid records,
        ranks' ends by polling."""
        self._stop_sending(why)
        if self._lost:
            return
        self._lost = True
        if self._events is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._events.fileno())
        for answer in self._answers.values():
            if not answer.done():
                answer.set_exception(ForkServerUnavailable(why))
        self._answers.clear()
        for pid, (exited, ticks) in self._exits.items():
            if not exited.done():
                poll = asyncio.ensure_future(_poll_until_gone(pid, ticks))
                poll.add_done_callback(functools.partial(_settle, exited))
        self._exits.clear()

    async def close(self) -> None:
        """Close our end: the fork server ends; ranks it started run on."""
        self._broken = True  # no warning: we end it
        self._lose("closed")
        for s in (self._requests, self._events):
            if s is not None:
                s.close()
        self._requests = self._events = None
        if self._process is not None:
            try:
                await asyncio.to_thread(self._process.wait, 5.0)
            except subprocess.TimeoutExpired:
                self._process.kill()
                await asyncio.to_thread(self._process.wait)


def pid_record(exit_file: str) -> Path:
    """The pid record supervise.py writes next to its exit file (``.pid`` for ``.exit``)."""
    base = exit_file[: -len(".exit")] if exit_file.endswith(".exit") else exit_file
    return Path(base + ".pid")


def claim_record(record: Path) -> tuple[int, int | None] | None:
    """Claim ``record`` as the fork server's child does (a file of ours hard-linked there): None
    when ours won (no child will run), else the (pid, start ticks) the winner recorded."""
    mine = record.with_name(f"{record.name}.executor.claim")
    fd = os.open(mine, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, b'{"pid": null, "start_ticks": null, "claimed_by": "executor"}')
    finally:
        os.close(fd)
    try:
        os.link(mine, record)
        return None
    except FileExistsError:
        pass
    finally:
        mine.unlink(missing_ok=True)
    try:
        fd = os.open(record, os.O_RDONLY | os.O_NOFOLLOW)
        with open(fd, "rb") as f:
            data = json.loads(f.read(4096))
        return int(data["pid"]), (None if data["start_ticks"] is None else int(data["start_ticks"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OSError(
            errno.EIO,
            f"whether the rank started is unknown: its pid record {record.name} is unreadable ({exc})",
        ) from exc


async def _poll_until_gone(pid: int, ticks: int | None) -> int | None:
    while same_process(pid, ticks):  # noqa: ASYNC110
        await asyncio.sleep(POLL_S)
    return None


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _settle(future: asyncio.Future[int | None], poll: asyncio.Future[int | None]) -> None:
    if not future.done():
        future.set_result(poll.result())
