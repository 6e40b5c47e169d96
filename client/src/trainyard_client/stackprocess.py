"""The embedded stack's processes and what goes wrong with them: errors, ports, private logs."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO

SERVICES = ("submission", "scheduler", "executor", "registry", "telemetry", "workflow")
INSTALL_HINT = "install trainyard-client[stack]  (pip install 'trainyard-client[stack]')"


class StackError(RuntimeError):
    """The stack could not start or keep running."""


class StackNotInstalled(StackError):
    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        super().__init__(f"the embedded stack needs {', '.join(missing)}: {INSTALL_HINT}")


class ServiceDied(StackError):
    """One or more processes of the stack exited; ``tails`` holds the last lines of each log."""

    def __init__(self, dead: list[ServiceProcess], tails: dict[str, str]) -> None:
        self.dead = dead
        self.tails = tails
        self.name = dead[0].name
        parts = [
            f"{s.name} (exit code {s.process.returncode if s.process else '?'}, log {s.log_path})"
            for s in dead
        ]
        super().__init__("exited: " + "; ".join(parts))


def missing_packages() -> list[str]:
    """The stack's modules that cannot be imported here (empty when the stack extra is installed)."""
    wanted = ["trainyard_shared.natsserver", *(f"trainyard_{name}.__main__" for name in SERVICES)]
    missing = []
    for module in wanted:
        try:
            found = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            found = None
        if found is None:
            missing.append(module.split(".")[0])
    return missing


def check_grace(raw: str, handback: float, stop_timeout: float) -> None:
    """The executor's job grace (``raw``, TRAINYARD_EXECUTOR_GRACE_SECONDS) plus ``handback`` must
    fit in the stack's stop timeout, else the executor is killed before it hands its jobs back."""
    try:
        grace = float(raw)
    except ValueError:
        raise StackError(
            f"TRAINYARD_EXECUTOR_GRACE_SECONDS must be a number of seconds, got {raw!r}"
        ) from None
    if grace + handback > stop_timeout:
        raise StackError(
            f"the executor's job grace ({grace:g}s, TRAINYARD_EXECUTOR_GRACE_SECONDS) plus"
            f" {handback:g}s to hand its attempts back must fit in the stack's"
            f" stop timeout ({stop_timeout:g}s): lower the grace or raise the stop timeout"
        )


def free_port(host: str) -> int:
    try:  # below the ephemeral range, so no outgoing connection takes it before we listen
        from trainyard_shared.natsserver import free_port
    except ImportError:  # the services are not installed: the stack cannot start anyway
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])
    return free_port(host)


def free_port_besides(host: str, chosen: list[int]) -> int:
    """A free port that is none of ``chosen`` (ports promised but not listened on yet), which it
    joins."""
    for _ in range(100):
        port = free_port(host)
        if port not in chosen:
            chosen.append(port)
            return port
    raise StackError(f"no free port on {host} besides {len(chosen)} already chosen")


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


@dataclass
class ServiceProcess:
    name: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def private_log(path: Path) -> IO[bytes]:
    """A log file to append to, readable by the stack's user only (also one an older stack made)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")
