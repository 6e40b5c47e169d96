"""For tests: `trainyard up` as a user runs it: a real child process, its console read as it comes, signals
sent to it as a terminal would (Ctrl-C is SIGINT to `trainyard up` alone: the services run in
their own sessions), and the processes below it looked up in /proc."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from trainyard_client import TrainyardClient
from trainyard_client.stackprocess import port_in_use

T = TypeVar("T")

STATE_CODES_GONE = ("Z", "X")


def until(probe: Callable[[], T | None], timeout: float, what: str, poll: float = 0.1) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(poll)


def free_block(size: int) -> int:
    """The first of ``size`` consecutive free loopback ports, below the usual ephemeral range."""
    for base in random.sample(range(20000, 30000, 10), 200):
        if not any(port_in_use("127.0.0.1", port) for port in range(base, base + size)):
            return base
    raise AssertionError("no block of free ports")


def alive(pid: int) -> bool:
    """True while ``pid`` exists and has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] not in STATE_CODES_GONE


def process_tree(root: int) -> dict[int, str]:
    """Every living process below ``root``, with its command line."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            parents.setdefault(int(stat[stat.rfind(")") + 2 :].split()[1]), []).append(int(name))
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            try:
                found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            todo.append(child)
    return {pid: cmd for pid, cmd in found.items() if alive(pid)}


class Up:
    """One `trainyard up` on a data dir and a block of ports; the console is collected in ``lines``."""

    def __init__(
        self,
        data: Path,
        api_port: int,
        nats_port: int,
        *args: str,
        env: dict[str, str] | None = None,
        sigint_ignored: bool = False,
    ) -> None:
        self.data, self.api_port, self.nats_port, self.args = data, api_port, nats_port, args
        self.env = env or {}
        self.sigint_ignored = sigint_ignored  # as `trainyard up &` in a script starts it
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 620) -> Up:
        env = {**os.environ, **self.env, "COLUMNS": "200", "TRAINYARD_DATA_DIR": str(self.data)}
        self.lines = []
        argv = [sys.executable, "-m", "trainyard_client.cli", "up", "--data-dir", str(self.data),
                "--api-port", str(self.api_port), "--nats-port", str(self.nats_port),
                "--ready-timeout", "600", *self.args]  # fmt: skip
        if self.sigint_ignored:  # exec keeps an ignored signal ignored
            argv = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *argv]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:  # a start that fails (or a test timeout meanwhile) leaves no stack behind
            proc = self.proc
            until(lambda: self.said("Trainyard is up") or proc.poll() is not None, timeout, "`trainyard up`")
            assert self.said("Trainyard is up"), "`trainyard up` did not start:\n" + self.console()
        except BaseException:
            self.kill()
            raise
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def console(self) -> str:
        return "".join(self.lines)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self) -> TrainyardClient:
        token = (self.data / "api-token").read_text().strip()
        return TrainyardClient(f"http://127.0.0.1:{self.api_port}", token, timeout=30)

    def child_pid(self, needle: str) -> int | None:
        """The pid of the child of `trainyard up` whose command line holds ``needle``
        (``-m trainyard_executor``, ``nats-server``)."""
        found = [
            pid for pid, cmd in process_tree(self.pid).items() if needle in cmd and _parent(pid) == self.pid
        ]
        return found[0] if found else None

    def signal(self, signum: int = signal.SIGINT) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """Wait for `trainyard up` to exit and its console to be read to the end."""
        assert self.proc is not None and self._reader is not None
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        """Clean-up after a failed test: kill it and everything below it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        below = process_tree(self.pid)
        self.proc.kill()
        self.proc.wait()
        for pid in below:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2 :].split()[1])
