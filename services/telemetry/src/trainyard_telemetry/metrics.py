"""Job metrics for Prometheus: event counters and latency histograms from the event stream, and
gauges (jobs by state, queue depth) computed at scrape time from where the events left each job
(``jobstates.JobStates``, seeded from the job records at start-up).

Observations are idempotent: an event redelivered after a crash is counted once (per event id).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from trainyard_contracts import TERMINAL_EVENT_TYPES, JobEvent, JobState
from trainyard_telemetry.jobstates import JobStates
from trainyard_telemetry.live import CPU, RSS, LiveLimits, LiveMetrics

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
RUN_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 48 * 3600)


class _Seen:
    """A bounded memory of event ids already counted."""

    def __init__(self, size: int = 200_000) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def first_time(self, event_id: str) -> bool:
        if event_id in self._ids:
            return False
        self._ids[event_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return True


class JobMetrics:
    def __init__(
        self, registry: CollectorRegistry, states: JobStates | None = None, live: LiveLimits | None = None
    ):
        # every series here goes into the service's registry (what /metrics serves)
        counter = functools.partial(Counter, registry=registry)
        histogram = functools.partial(Histogram, registry=registry)
        self.events = counter("trainyard_job_events", "job events seen, by type", ["type"])
        self.submit_to_start = histogram(
            "trainyard_job_submit_to_start_seconds",
            "from submitted to running, per attempt",
            ["queue"],
            buckets=LATENCY_BUCKETS,
        )
        self.run_time = histogram(
            "trainyard_job_run_seconds",
            "run time of attempts that ended, by outcome",
            ["queue", "outcome"],
            buckets=RUN_BUCKETS,
        )
        self.requeues = counter(
            "trainyard_job_requeues",
            "attempts sent back to the queue, by queue and reason (retry, executor_lost, preempted)",
            ["queue", "reason"],
        )
        self._seen = _Seen()
        self.states = states if states is not None else JobStates()
        registry.register(_StateCollector(self.states))
        self.live = LiveMetrics(self.states, live)
        registry.register(_LiveCollector(self.live))

    def observe(self, event: JobEvent) -> bool:
        facts = self.states.apply(event)  # idempotent: only what moves a job forward is taken
        if event.type in TERMINAL_EVENT_TYPES:
            self.live.forget(event.job_id)
        if not self._seen.first_time(event.event_id):
            return False
        self.events.labels(event.type).inc()
        queue = facts.queue if facts else "unknown"
        if event.type == "running" and facts is not None and facts.submitted_at is not None:
            waited = (event.time - facts.submitted_at).total_seconds()
            self.submit_to_start.labels(queue).observe(max(waited, 0.0))
        elif event.type in TERMINAL_EVENT_TYPES and event.type != "rejected":
            duration = getattr(event, "duration_seconds", None)
            if duration is not None:
                self.run_time.labels(queue, event.type).observe(duration)
        elif event.type == "requeued":
            self.requeues.labels(queue, event.reason).inc()
        return True


class _StateCollector(Collector):
    def __init__(self, states: JobStates) -> None:
        self._states = states

    def collect(self) -> Iterable[GaugeMetricFamily]:
        by_state, depth = self._states.tally()
        jobs = GaugeMetricFamily("trainyard_jobs", "jobs by state", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], by_state.get(state.value, 0))
        yield jobs
        queue = GaugeMetricFamily(
            "trainyard_queue_depth", "jobs waiting to be placed, by queue", labels=["queue"]
        )
        for name, count in sorted(depth.items()):
            queue.add_metric([name], count)
        yield queue


class _LiveCollector(Collector):
    """What running jobs report (live.py): series only while a job runs."""

    def __init__(self, live: LiveMetrics) -> None:
        self._live = live

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        values = GaugeMetricFamily(
            "trainyard_job_metric",
            "the latest value a running job reported (trainyard.report), by metric name",
            labels=["job_id", "queue", "name"],
        )
        steps = GaugeMetricFamily(
            "trainyard_job_metric_step", "the latest step a running job reported", labels=["job_id", "queue"]
        )
        requested = GaugeMetricFamily(
            "trainyard_job_requested",
            "what a running job asked for, its replicas together: cpu (cores), memory_bytes",
            labels=["job_id", "queue", "resource"],
        )
        queue_requested: dict[tuple[str, str], float] = {}
        queue_used: dict[tuple[str, str], float] = {}
        for job_id, queue, latest in self._live.running():
            if latest.step >= 0:
                steps.add_metric([job_id, queue], latest.step)
            shown = self._live.shown(queue)
            for name, (_, value) in sorted(latest.values.items()):
                if shown(name):
                    values.add_metric([job_id, queue, name], value)
            facts = self._live.states.get(job_id)
            if facts is None or not facts.cpu:
                continue
            requested.add_metric([job_id, queue, "cpu"], facts.cpu)
            requested.add_metric([job_id, queue, "memory_bytes"], facts.memory_bytes)
            cpu, rss = latest.values.get(CPU), latest.values.get(RSS)
            if cpu is None or rss is None:
                continue  # its use is not sampled (yet, or on this backend): not in the queue's view
            for resource, asked, used in (
                ("cpu", facts.cpu, cpu[1]),
                ("memory_bytes", facts.memory_bytes, rss[1]),
            ):
                queue_requested[queue, resource] = queue_requested.get((queue, resource), 0.0) + asked
                queue_used[queue, resource] = queue_used.get((queue, resource), 0.0) + used
        yield values
        yield steps
        yield requested
        for name, sums, what in (
            ("trainyard_queue_requested", queue_requested, "asked for"),
            ("trainyard_queue_used", queue_used, "using now (sampled)"),
        ):
            family = GaugeMetricFamily(
                name,
                f"what the running jobs of a queue whose use is sampled are {what}: cpu (cores), "
                "memory_bytes",
                labels=["queue", "resource"],
            )
            for (queue, resource), total in sorted(sums.items()):
                family.add_metric([queue, resource], total)
            yield family
        dropped = CounterMetricFamily(
            "trainyard_job_metric_dropped",
            "reported values not exposed: names over a job's limit or not allowed, jobs over the limit, "
            "batches of jobs that ended",
            labels=["reason"],
        )
        for reason, count in sorted(self._live.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped
