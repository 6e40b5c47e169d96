"""The embedded stack's processes and what goes wrong with them: errors, ports, private logs."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
from collections.abc import Mapping
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


COHOSTED = ("registry", "telemetry", "workflow")
"""The services `trainyard up` runs in one process (trainyard_shared.cohost): none holds the
admission key or starts a job, and one interpreter instead of three is ~110 MB less when idle."""


@dataclass
class ServiceProcess:
    name: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None
    hosts: tuple[str, ...] = ()
    """The services this process runs when it runs several (trainyard_shared.cohost)."""

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def services(self) -> tuple[str, ...]:
        return self.hosts or (self.name,)

    def argv(self, python: str) -> list[str]:
        if self.hosts:
            return [python, "-m", "trainyard_shared.cohost", *self.hosts]
        return [python, "-m", f"trainyard_{self.name}"]


def service_processes(ports: Mapping[str, int], log_dir: Path, cohost: bool) -> dict[str, ServiceProcess]:
    """The stack's service processes by name: one per service, or the :data:`COHOSTED` ones in one
    (named ``registry+telemetry+workflow``, its log ``logs/registry+telemetry+workflow.log``)."""
    alone = [name for name in SERVICES if not (cohost and name in COHOSTED)]
    processes = {name: ServiceProcess(name, ports[name], log_dir / f"{name}.log") for name in alone}
    if cohost:
        name = "+".join(COHOSTED)
        processes[name] = ServiceProcess(name, ports[COHOSTED[0]], log_dir / f"{name}.log", hosts=COHOSTED)
    return processes


def private_log(path: Path) -> IO[bytes]:
    """A log file to append to, readable by the stack's user only (also one an older stack made)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


def lock_data_dir(data_dir: Path) -> IO[str] | None:
    """The data dir's lock (``stack.lock``, holding this pid), held for the stack's life; StackError
    when another `trainyard up` holds it (None where there is no ``fcntl``)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    handle = open(data_dir / "stack.lock", "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise StackError(
            f"another `trainyard up` is using {data_dir}; stop it first or choose another --data-dir"
        ) from exc
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def log_tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file (of its last 64 KiB); empty when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
