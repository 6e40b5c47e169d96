"""The executor's side of the fork server (``trainyard_executor/forkserver.py``): start it once,
ask it for a rank, hear when the rank's supervisor ends.

A rank it forks is not the executor's child: its end comes as an event from the fork server (or,
if the fork server is gone, is seen by polling the pid, as for a rank adopted after a restart).
Anything that keeps the fork server from answering makes :meth:`ForkServer.spawn` raise
:class:`ForkServerUnavailable`, and the caller starts the rank as its own interpreter instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import os
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
ANSWER_TIMEOUT_S = 30.0
POLL_S = 0.1


class ForkServerUnavailable(Exception):
    """The fork server could not take the request: start the rank the old way."""


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
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._exits: dict[int, tuple[asyncio.Future[int | None], int | None]] = {}
        self._early_exits: dict[int, int] = {}
        self._start_lock = asyncio.Lock()
        self._broken = False

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
            ours_req.settimeout(SEND_TIMEOUT_S)
            ours_ev.setblocking(False)
            self._requests, self._events = ours_req, ours_ev
            asyncio.get_running_loop().add_reader(ours_ev.fileno(), self._on_events)

    async def spawn(
        self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], stdout: int, stderr: int
    ) -> ForkedRank:
        """A rank's supervisor (``supervise.main(argv)``) forked in its own session with these
        stdout/stderr descriptors (the caller keeps and closes its own). Raises
        ForkServerUnavailable when the fork server cannot take it, OSError (its errno) when the
        child could not be set up (cwd missing, ...)."""
        if self._broken:
            raise ForkServerUnavailable("the fork server has ended")
        request_id = next(self._ids)
        request = {"id": request_id, "argv": list(argv), "cwd": str(cwd), "env": dict(env)}
        message = json.dumps(request).encode()
        if len(message) > MAX_REQUEST:
            raise ForkServerUnavailable(f"request of {len(message)} bytes over {MAX_REQUEST}")
        try:
            await self._ensure_started()
        except OSError as exc:
            self._broken = True
            raise ForkServerUnavailable(f"cannot start the fork server: {exc}") from exc
        assert self._requests is not None
        answer = asyncio.get_running_loop().create_future()
        self._answers[request_id] = answer
        try:
            socket.send_fds(self._requests, [message], [stdout, stderr])
            said = await asyncio.wait_for(answer, ANSWER_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            self._answers.pop(request_id, None)
            self._break(f"it did not take a request: {exc}")
            raise ForkServerUnavailable(str(exc)) from exc
        if "pid" not in said:
            raise OSError(int(said.get("errno") or 0), str(said.get("error")))
        pid, ticks = int(said["pid"]), said.get("start_ticks")
        return ForkedRank(pid, ticks, self._exit_future(pid, ticks))

    def _exit_future(self, pid: int, ticks: int | None) -> asyncio.Future[int | None]:
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[int | None] = loop.create_future()
        if pid in self._early_exits:
            exited.set_result(self._early_exits.pop(pid))
        elif self._broken:
            return asyncio.ensure_future(_poll_until_gone(pid, ticks))
        else:
            self._exits[pid] = (exited, ticks)
        return exited

    def _on_events(self) -> None:
        assert self._events is not None
        while True:
            try:
                data = self._events.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                self._break(f"its event socket failed: {exc}")
                return
            if not data:
                self._break("it ended")
                return
            self._dispatch(json.loads(data))

    def _dispatch(self, said: dict[str, Any]) -> None:
        if "exited" in said:
            pid, code = int(said["exited"]), int(said["returncode"])
            waiting = self._exits.pop(pid, None)
            if waiting is None:
                self._early_exits[pid] = code  # its answer is still on the way to spawn()
            elif not waiting[0].done():
                waiting[0].set_result(code)
            return
        answer = self._answers.pop(int(said.get("id") or 0), None)
        if answer is not None and not answer.done():
            answer.set_result(said)

    def _break(self, why: str) -> None:
        """The fork server is gone: what waits on it is answered otherwise."""
        if self._broken:
            return
        self._broken = True
        log.warning("the local fork server is gone (%s): ranks start as their own interpreters", why)
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
        self._break("closed")
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


async def _poll_until_gone(pid: int, ticks: int | None) -> int | None:
    while same_process(pid, ticks):  # noqa: ASYNC110
        await asyncio.sleep(POLL_S)
    return None


def _settle(future: asyncio.Future[int | None], poll: asyncio.Future[int | None]) -> None:
    if not future.done():
        future.set_result(poll.result())
