"""A real TCP listener on loopback for tests of what we send over a wire whose server cannot run
here (Logstash's json_lines input): it collects newline-terminated lines."""

from __future__ import annotations

import socket
import threading
import time


class LineListener:
    """A TCP server on loopback collecting newline-terminated lines (one connection at a time)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.lines: list[bytes] = []
        self.arrived = threading.Condition()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            buffer = b""
            with conn:
                while chunk := conn.recv(65536):
                    buffer += chunk
                    *complete, buffer = buffer.split(b"\n")
                    with self.arrived:
                        self.lines += [line for line in complete if line]
                        self.arrived.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.lines) < count and time.monotonic() < deadline:
                self.arrived.wait(deadline - time.monotonic())
            return list(self.lines)

    def close(self) -> None:
        self.sock.close()
