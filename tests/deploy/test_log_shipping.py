"""What the services send to Logstash is what deploy/logstash/pipeline/trainyard.conf reads.

Logstash cannot run here (not packaged for this machine), so the test is our side of the wire: the
services' real logging setup (``setup_logging`` with LOGSTASH_HOST/PORT, python-logstash over TCP)
sends to a real TCP listener the test starts on loopback, and each message must be one JSON object
per line (the pipeline's ``json_lines`` codec) carrying the fields its filter uses.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from trainyard_shared.logs import setup_logging
from trainyard_shared.testing.listeners import LineListener

from .natsconf import ROOT

pytestmark = pytest.mark.unit


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
