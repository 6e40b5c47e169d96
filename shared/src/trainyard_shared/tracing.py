"""OpenTelemetry: a tracer provider per service, exporting OTLP/HTTP when an endpoint is set."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


@functools.cache
def tracing_enabled() -> bool:
    """Tracing is on when spans have somewhere to go: an OTLP endpoint is configured (the
    standard ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` variables) and ``OTEL_SDK_DISABLED`` is not
    true. Off, no span is recorded and no trace context travels: recording spans nobody exports
    cost ~20 % of each service's CPU per message. Read once per process: it is asked on every
    publish, and the environment does not change under a running service."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return any(os.environ.get(name) for name in endpoints)


def setup_tracing(service: str) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": f"trainyard-{service}"}))
    if tracing_enabled():
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        # global only when spans go somewhere: otherwise every library that asks the global
        # provider (FastAPI's request spans, our job span) would record spans nobody reads
        trace.set_tracer_provider(provider)
    return provider


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def job_trace(traceparent: str | None) -> Iterator[None]:
    """Make the job's trace current, so what is published now joins it (work done outside a
    message handler, such as a planning pass, would otherwise start a trace of its own)."""
    if not traceparent:
        yield
        return
    token = context.attach(propagate.extract({"traceparent": traceparent}))
    try:
        yield
    finally:
        context.detach(token)
