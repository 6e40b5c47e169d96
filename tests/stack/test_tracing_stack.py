"""One job is one trace across services, exported over OTLP/HTTP.

No OpenTelemetry collector can run here; a real HTTP listener on loopback stands in for it and
decodes exactly the protobuf requests the services' OTLP exporters send.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from trainyard_client.stack import EmbeddedStack

pytestmark = pytest.mark.stack


class Collector(BaseHTTPRequestHandler):
    spans: list[tuple[str, str, str]] = []  # (service.name, trace id, span name)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    Collector.spans.append((attrs.get("service.name", "?"), span.trace_id.hex(), span.name))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_job_is_one_trace_across_services(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    try:
        with EmbeddedStack(
            tmp_path / "ty", api_port=None, nats_port=None, env=env, ready_timeout=120
        ) as stack:
            client = stack.client()
            job = client.submit({"name": "traced", "command": ["true"]})
            assert client.wait(job.job_id, timeout=120).state.value == "succeeded"
            deadline = time.monotonic() + 30
            services_per_trace: dict[str, set[str]] = defaultdict(set)
            while time.monotonic() < deadline:
                services_per_trace.clear()
                for service, trace_id, name in list(Collector.spans):
                    if job.job_id in name or ".job." in name or ".exec." in name:
                        services_per_trace[trace_id].add(service)
                widest = max(services_per_trace.values(), key=len, default=set())
                if {"trainyard-scheduler", "trainyard-executor"} <= widest:
                    break
                time.sleep(0.2)  # polling the collector's inbox, with a deadline
    finally:
        server.shutdown()
    widest = max(services_per_trace.values(), key=len, default=set())
    assert {"trainyard-submission", "trainyard-scheduler", "trainyard-executor"} <= widest, dict(
        services_per_trace
    )
