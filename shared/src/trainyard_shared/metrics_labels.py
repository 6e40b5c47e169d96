"""Bounded Prometheus labels for faststream's NATS middleware.

faststream labels each message metric with the raw subject. Ours carry a job id
(``trainyard.job.<job_id>.running``), so every job would add new time series to every service's
``/metrics`` for ever: unbounded memory, and a new labelled child built on every message (measured:
~15 % of the scheduler's CPU under load). The subject is reduced to its shape instead: any token
that names a job (``<prefix>.job.<id>.<event>``) or an attempt (``<prefix>.log.<id>.<attempt>``)
becomes ``*``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from faststream.nats.prometheus.provider import (
    BatchNatsMetricsSettingsProvider,
    NatsMetricsSettingsProvider,
)
from faststream.prometheus.middleware import PrometheusMiddleware
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

_PER_JOB = {"job": 1, "log": 2}  # the kind of subject -> how many tokens after it name a job


def subject_shape(subject: str) -> str:
    """``trainyard.job.0mx0y….running`` -> ``trainyard.job.*.running``."""
    tokens = subject.split(".")
    masked = _PER_JOB.get(tokens[1]) if len(tokens) > 2 else None
    if masked is None:
        return subject
    for i in range(2, min(2 + masked, len(tokens))):
        tokens[i] = "*"
    return ".".join(tokens)


class _ShapedSubjects:
    """faststream's own provider, with each subject reduced to its shape."""

    __slots__ = ("inner", "messaging_system")

    def __init__(self, inner: NatsMetricsSettingsProvider | BatchNatsMetricsSettingsProvider) -> None:
        self.inner = inner
        self.messaging_system = inner.messaging_system

    def get_consume_attrs_from_message(self, msg: Any) -> Any:
        attrs = self.inner.get_consume_attrs_from_message(msg)
        attrs["destination_name"] = subject_shape(attrs["destination_name"])
        return attrs

    def get_publish_destination_name_from_cmd(self, cmd: Any) -> str:
        return subject_shape(cmd.destination)


_SINGLE = _ShapedSubjects(NatsMetricsSettingsProvider())
_BATCH = _ShapedSubjects(BatchNatsMetricsSettingsProvider())


def _provider(msg: Msg | Sequence[Msg] | None) -> Any:
    if isinstance(msg, Sequence):
        return _BATCH
    if isinstance(msg, Msg) or msg is None:
        return _SINGLE
    return None  # KV and object-store watches: not counted, as in faststream


def bounded_prometheus_middleware(
    registry: CollectorRegistry, app_name: str
) -> PrometheusMiddleware[Any, Any]:
    return PrometheusMiddleware(settings_provider_factory=_provider, registry=registry, app_name=app_name)
