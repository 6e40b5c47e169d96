"""What a Kubernetes attempt's pods use, from the resource metrics API (``metrics.k8s.io/v1beta1``
PodMetrics, served by metrics-server): the readings the executor's sampler turns into ``sys.cpu``,
``sys.cpu_seconds`` and ``sys.rss_bytes`` (sampling.py; docs/insight.md, "Resource use").

A PodMetrics object carries, per container, ``usage.cpu`` (cores, a rate averaged over the
object's ``window`` ending at its ``timestamp``: "250m", "1234567n") and ``usage.memory`` (the
working set, bytes: "123456Ki"); quantities are parsed with the client's ``parse_quantity``.

- A pod's figures are its containers' together; a gang's are its ranks' pods' together (what the
  attempt holds, as the local backend sums a gang's processes).
- ``sys.cpu`` is the API's rate as it is (the newest window of each pod, together).
- ``sys.cpu_seconds`` is not in the API: it is integrated here from the rates. Each new window of
  a pod counts its rate over the time since that pod's previous window ended (over the window
  itself for the first one), so when every window is seen (the sampler polls more often than
  metrics-server scrapes, 15 s by default) the sum is the kubelet's CPU counter between the pod's
  first and last scrape; a window missed is filled in with the next one's rate. The CPU before
  the first scrape and after the last one is not counted: an estimate, a little low.
- No metrics API (404: metrics-server not installed), a pod not scraped yet or gone (404 too),
  or any other failure: that pod gives nothing this time. No reading at all means no sample; the
  attempt runs on. An attempt whose pods give nothing ``NOTE_AFTER`` reads in a row (past a new
  pod's first scrape) is logged, once per backend: one line, not one per sample or attempt.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity

from trainyard_executor.sampling import Reading

log = logging.getLogger("trainyard.executor.kubernetes")

METRICS_GROUP = "metrics.k8s.io"
METRICS_VERSION = "v1beta1"
METRICS_PLURAL = "pods"
_DURATION = re.compile(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)")
NOTE_AFTER = 3  # reads of nothing in a row before the metrics API is said to be missing
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(text: str) -> float | None:
    """A Go duration as the API writes a window ("15s", "10.5s", "1m0s"), in seconds; None when
    it is not one."""
    parts = _DURATION.findall(text or "")
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def _quantity(container: Mapping[str, Any], resource: str) -> float:
    """A container's usage of ``resource`` (a quantity string) as a number (cores, bytes)."""
    text = (container.get("usage") or {}).get(resource, "0")
    return float(parse_quantity(text))  # type: ignore[no-untyped-call]  # the client is not annotated


@dataclass(frozen=True)
class PodUsage:
    """One PodMetrics answer: when its window ended (epoch seconds), how long it was, and the
    pod's containers together: cores in use and working-set bytes."""

    timestamp: float
    window_s: float
    cores: float
    memory_bytes: int


def pod_usage(metrics: Mapping[str, Any]) -> PodUsage | None:
    """A PodMetrics object (as the API answers it) read; None when it is not one (no containers,
    a quantity or time that does not parse)."""
    containers = metrics.get("containers")
    if not isinstance(containers, list) or not containers:
        return None
    try:
        cores = sum((_quantity(c, "cpu") for c in containers), 0.0)
        memory = sum(int(_quantity(c, "memory")) for c in containers)
        when = datetime.fromisoformat(str(metrics.get("timestamp"))).timestamp()
    except (ValueError, TypeError, ArithmeticError, AttributeError):
        return None
    window = go_duration(str(metrics.get("window") or "")) or 0.0
    return PodUsage(timestamp=when, window_s=window, cores=cores, memory_bytes=max(memory, 0))


class PodMetricsReader:
    """An attempt's usage reader (``read_usage``: blocking, called in the metrics shipper's worker
    thread once per sample interval): the pods ``pod_names()`` gives, each read by name."""

    def __init__(
        self,
        get_pod_metrics: Callable[[str], Mapping[str, Any]],
        pod_names: Callable[[], Iterable[str]],
        note_failure: Callable[[str, BaseException], None],
    ) -> None:
        self.get = get_pod_metrics
        self.pod_names = pod_names
        self.note_failure = note_failure
        self._lock = threading.Lock()  # one read at a time: the integral is one reader's
        self._last: dict[str, float] = {}  # pod -> the end of its newest window counted
        self._cpu_seconds: dict[str, float] = {}  # pod -> CPU seconds integrated (kept when it goes)
        self._misses = 0  # reads in a row that gave nothing

    def __call__(self) -> Reading | None:
        with self._lock:
            cores, memory, seen = 0.0, 0, False
            failed: tuple[str, BaseException] | None = None
            for pod in self.pod_names():
                try:
                    usage = pod_usage(self.get(pod))
                except Exception as exc:  # the API absent (404), a pod not scraped yet, a network fault
                    failed = failed or (pod, exc)
                    continue
                if usage is None:
                    continue
                self._integrate(pod, usage)
                cores, memory, seen = cores + usage.cores, memory + usage.memory_bytes, True
            if seen:
                self._misses = 0
                return Reading(sum(self._cpu_seconds.values()), memory, cpu_cores=cores)
            if failed is not None:
                self._misses += 1
                if self._misses == NOTE_AFTER:
                    self.note_failure(*failed)
            return None

    def _integrate(self, pod: str, usage: PodUsage) -> None:
        last = self._last.get(pod)
        if last is not None and usage.timestamp <= last:
            return  # a window already counted (metrics-server has not scraped again)
        span = usage.window_s if last is None else usage.timestamp - last
        self._cpu_seconds[pod] = self._cpu_seconds.get(pod, 0.0) + usage.cores * span
        self._last[pod] = usage.timestamp


class MetricsApiNotes:
    """The one log line of a backend whose metrics API does not answer (per executor, not per
    sample or attempt: a cluster without metrics-server would fill the log otherwise)."""

    def __init__(self) -> None:
        self._noted = False

    def __call__(self, pod: str, exc: BaseException) -> None:
        if self._noted:
            return
        self._noted = True
        status = exc.status if isinstance(exc, ApiException) else None
        log.info(
            "no resource samples from the metrics API (metrics.k8s.io/v1beta1) for a pod; "
            "is metrics-server installed? Attempts run on without them (logged once)",
            extra={"pod": pod, "status": status, "error": f"{type(exc).__name__}"},
        )
