"""Structured logs: JSON lines on stderr and to Logstash over TCP, secrets masked.

Logstash itself cannot run here; a real TCP listener on loopback stands in for its json_lines input
and receives exactly what python-logstash sends.
"""

from __future__ import annotations

import json
import logging
import socket
import threading

import pytest

from trainyard_shared.logs import setup_logging

pytestmark = pytest.mark.unit


def test_logs_ship_to_logstash_as_json_with_secrets_masked(monkeypatch, capsys):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    received: list[bytes] = []

    def accept() -> None:
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(65536):
                received.append(chunk)
                if b"\n" in chunk:
                    return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    monkeypatch.setenv("LOGSTASH_HOST", "127.0.0.1")
    monkeypatch.setenv("LOGSTASH_PORT", str(server.getsockname()[1]))
    try:
        setup_logging("scheduler", "INFO", "json")
        logging.getLogger("trainyard.test").info("job placed", extra={"job_id": "j1", "api_token": "s3cret"})
        thread.join(timeout=10)
    finally:
        for handler in logging.getLogger().handlers:
            handler.close()
        logging.getLogger().handlers.clear()
        server.close()
    shipped = json.loads(b"".join(received).split(b"\n")[0])
    assert shipped["message"] == "job placed" and shipped["job_id"] == "j1"
    assert shipped["api_token"] == "***" and "trainyard" in shipped["tags"]
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["service"] == "scheduler" and line["level"] == "INFO"
    assert line["api_token"] == "***" and "s3cret" not in json.dumps(line)
