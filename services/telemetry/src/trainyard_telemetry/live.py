"""The latest value of each metric a running job reports (``trainyard.report``), for Prometheus.

One gauge, ``trainyard_job_metric{job_id, queue, name}``, and the step it was reported at,
``trainyard_job_metric_step{job_id, queue}``, built at scrape time, and only for jobs whose state
(``jobstates.JobStates``, kept from the job events) is ``running``: when a job ends its series are
gone from the next scrape, with nothing to remove by hand (Prometheus marks them stale). Job ids
as label values are what Prometheus' guidance on cardinality warns about, so they are bounded:
at most ``max_jobs`` jobs (the least recently updated one is forgotten first) and ``max_names``
names per job (a queue's first names win; ``allow``, a pattern, narrows which), so at most
``max_jobs x (max_names + 1)`` series. A queue's ``metric_names`` (shell-style patterns) narrows
further what its jobs show. Pure: no I/O (the queue's patterns come from a callable).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from trainyard_contracts import JobState, MetricsBatch
from trainyard_telemetry.jobstates import UNKNOWN_QUEUE, JobStates

SYSTEM_PREFIX = "sys."
"""Names the executor publishes (its resource samples: sys.cpu, sys.cpu_seconds, sys.rss_bytes)."""
CPU = "sys.cpu"
RSS = "sys.rss_bytes"


@dataclass(slots=True)
class JobLatest:
    attempt: int
    step: int = -1
    values: dict[str, tuple[int, float]] = field(default_factory=dict)  # name -> (step, value)
    names: int = 0  # the job's own names among them (the executor's sys.* do not count)


@dataclass(frozen=True)
class LiveLimits:
    max_jobs: int = 1000
    max_names: int = 32
    allow: str | None = None
    """A regular expression names must match in full to be exposed (None: every name)."""


QueuePatterns = Callable[[str], Sequence[str] | None]
"""A queue's ``metric_names`` (None: the queue does not narrow them)."""


@functools.lru_cache(maxsize=1024)
def _matcher(patterns: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns) or r"(?!)")


def queue_allows(patterns: Sequence[str] | None, name: str) -> bool:
    """Whether a queue with these ``metric_names`` shows ``name`` (the executor's sys.* always)."""
    if patterns is None or name.startswith(SYSTEM_PREFIX):
        return True
    return _matcher(tuple(patterns)).match(name) is not None


class LiveMetrics:
    def __init__(
        self, states: JobStates, limits: LiveLimits | None = None, queue_patterns: QueuePatterns | None = None
    ) -> None:
        self.states = states
        self.queue_patterns: QueuePatterns = queue_patterns or (lambda queue: None)
        self.limits = limits or LiveLimits()
        self._allow = re.compile(self.limits.allow) if self.limits.allow else None
        self.jobs: OrderedDict[str, JobLatest] = OrderedDict()
        self.dropped: dict[str, int] = {"names": 0, "jobs": 0, "ended": 0}

    def observe(self, batch: MetricsBatch) -> None:
        """Take a batch's points (idempotent: a value older than the one held, by step, is not
        taken; a batch of an older attempt or of a job that ended is ignored)."""
        facts = self.states.get(batch.job_id)
        if facts is not None and (facts.state.terminal or batch.attempt < facts.attempt):
            self.dropped["ended"] += 1
            return
        latest = self.jobs.get(batch.job_id)
        if latest is None or batch.attempt > latest.attempt:
            latest = self.jobs[batch.job_id] = JobLatest(batch.attempt)
        elif batch.attempt < latest.attempt:
            self.dropped["ended"] += 1
            return
        self.jobs.move_to_end(batch.job_id)
        while len(self.jobs) > self.limits.max_jobs:
            self.jobs.popitem(last=False)
            self.dropped["jobs"] += 1
        for point in batch.points:
            if not all(name.startswith(SYSTEM_PREFIX) for name in point.values):
                # a resource sample's step is its time (the executor's), not a training step
                latest.step = max(latest.step, point.step)
            for name, value in point.values.items():
                held = latest.values.get(name)
                if held is None and not name.startswith(SYSTEM_PREFIX):  # the executor's few: always
                    if latest.names >= self.limits.max_names or (
                        self._allow is not None and not self._allow.fullmatch(name)
                    ):
                        self.dropped["names"] += 1
                        continue
                    latest.names += 1
                elif held is not None and held[0] > point.step:
                    continue
                latest.values[name] = (point.step, value)

    def forget(self, job_id: str) -> None:
        """The job ended: its values are not kept (its series already left with its state)."""
        self.jobs.pop(job_id, None)

    def shown(self, queue: str) -> Callable[[str], bool]:
        """Which of a job's names its queue shows (asked at scrape time, so a change of the
        queue's ``metric_names`` applies from the next scrape, to jobs already running too)."""
        patterns = self.queue_patterns(queue)
        return lambda name: queue_allows(patterns, name)

    def running(self) -> Iterator[tuple[str, str, JobLatest]]:
        """(job id, queue, latest) of the jobs that run now; forgets those known to have ended."""
        for job_id, latest in list(self.jobs.items()):
            facts = self.states.get(job_id)
            if facts is None:
                continue  # its running event has not been seen yet: shown once it has
            if facts.state.terminal:
                self.forget(job_id)
            elif facts.state == JobState.RUNNING and facts.attempt == latest.attempt:
                yield job_id, facts.queue or UNKNOWN_QUEUE, latest
