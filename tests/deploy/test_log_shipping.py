"""What the services send to Logstash is what deploy/logstash/pipeline/trainyard.conf reads.

Logstash cannot run here (not packaged for this machine), so the test is our side of the wire: the
services' real logging setup (``setup_logging`` with LOGSTASH_HOST/PORT, python-logstash over TCP)
sends to a real TCP listener the test starts on loopback, and each message must be one JSON object
per line (the pipeline's ``json_lines`` codec) carrying the fields its filter uses.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from trainyard_shared.logs import setup_logging

from .natsconf import ROOT

pytestmark = pytest.mark.unit


class LineListener:
    """A TCP server on loopback collecting newline-terminated lines."""

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


@pytest.fixture
def listener() -> Iterator[LineListener]:
    server = LineListener()
    yield server
    server.close()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_service_ships_json_lines_the_pipeline_can_read(listener, restore_logging, monkeypatch):
    monkeypatch.setenv("LOGSTASH_HOST", "127.0.0.1")
    monkeypatch.setenv("LOGSTASH_PORT", str(listener.port))
    monkeypatch.setenv("LOGSTASH_TRANSPORT", "tcp")
    setup_logging("scheduler", "INFO", "json")
    log = logging.getLogger("trainyard.scheduler")
    log.info("job queued", extra={"job_id": "j-1", "api_token": "s3cr3t-value"})
    log.warning("executor lost", extra={"executor_id": "exec-a"})

    lines = listener.wait_for(2)
    assert len(lines) == 2, lines
    first, second = (json.loads(line) for line in lines)  # one JSON object per line: json_lines
    assert first["message"] == "job queued" and first["job_id"] == "j-1"
    assert first["tags"] == ["trainyard", "scheduler"]  # the pipeline's service field comes from here
    assert first["level"] == "INFO" and second["level"] == "WARNING"
    assert isinstance(first["host"], str)  # renamed to source_host by the pipeline
    assert "@timestamp" in first and second["executor_id"] == "exec-a"
    assert "s3cr3t-value" not in lines[0].decode()  # secrets are masked before they leave


def test_the_pipeline_reads_the_fields_the_services_send():
    pipeline = (ROOT / "deploy" / "logstash" / "pipeline" / "trainyard.conf").read_text()
    assert '"trainyard" in [tags]' in pipeline
    assert '"host" => "source_host"' in pipeline and "codec => json_lines" in pipeline
    assert 'index => "trainyard-logs-%{+YYYY.MM.dd}"' in pipeline
