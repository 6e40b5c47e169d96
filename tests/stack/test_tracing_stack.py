"""One job is one trace across services and into the training code, exported over OTLP/HTTP.

No OpenTelemetry collector can run here; a real HTTP listener on loopback stands in for it and
decodes exactly the protobuf requests the services' OTLP exporters send. The job is a Python
script that makes a span of its own with the context the executor hands it (``TRACEPARENT``).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from trainyard_client.stack import EmbeddedStack

pytestmark = [pytest.mark.stack, pytest.mark.insight]

# what a training script does to join its job's trace (docs/insight.md, "Traces into the job")
TRAINING_SCRIPT = """
import os
from opentelemetry import propagate
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

provider = TracerProvider(resource=Resource.create({"service.name": "training-script"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
parent = propagate.extract({"traceparent": os.environ["TRACEPARENT"]})
with provider.get_tracer("train").start_as_current_span("train.epoch", context=parent):
    pass
provider.shutdown()
"""


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


def test_a_job_is_one_trace_across_services_and_into_the_training_code(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    try:
        with EmbeddedStack(
            tmp_path / "ty", api_port=None, nats_port=None, env=env, ready_timeout=120
        ) as stack:
            client = stack.client()
            job = client.submit(
                {
                    "name": "traced",
                    "command": ["python", "-c", TRAINING_SCRIPT],
                    "env": {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint},
                }
            )
            assert client.wait(job.job_id, timeout=120).state.value == "succeeded"
            deadline = time.monotonic() + 30
            services_per_trace: dict[str, set[str]] = defaultdict(set)
            while time.monotonic() < deadline:
                services_per_trace.clear()
                for service, trace_id, name in list(Collector.spans):
                    if job.job_id in name or ".job." in name or ".exec." in name or name == "train.epoch":
                        services_per_trace[trace_id].add(service)
                widest = max(services_per_trace.values(), key=len, default=set())
                if {"trainyard-scheduler", "trainyard-executor", "training-script"} <= widest:
                    break
                time.sleep(0.2)  # polling the collector's inbox, with a deadline
    finally:
        server.shutdown()
    widest = max(services_per_trace.values(), key=len, default=set())
    wanted = {"trainyard-submission", "trainyard-scheduler", "trainyard-executor", "training-script"}
    assert wanted <= widest, dict(services_per_trace)
