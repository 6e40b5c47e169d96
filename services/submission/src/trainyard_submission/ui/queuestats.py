"""The queues page's numbers: each queue's usage against its quota and its pending jobs now, and a
bounded history of its depth and longest wait for the chart (docs/ui.md, "Queue charts").

Now: each queue's waiting jobs are counted by the server, not read (``JobIndex.count``: one
request per queue and pending state, whatever the backlog), and the first entry stored in each of
those states dates its longest wait; the entries of the holding states (scheduled, running) name
the jobs whose records say what they hold (resources times replicas), summed per queue as the
scheduler sums them for a quota. Entries are not checked against records for the counts (a stale
entry lives a moment; the chart is a picture, not an invoice); holding records are read, at most
``MAX_HOLDING_READ``.

History: a task of each submission replica samples the counts every ``ui_queue_sample_seconds``
into a ring per queue holding ``ui_queue_history_hours``; in memory, so a replica's chart starts
empty when it starts, and two replicas may each draw their own (the same numbers, sampled apart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import ValidationError

from trainyard_contracts import ExecutorHeartbeat, JobRecord
from trainyard_shared.jobindex import IndexEntry, JobIndex
from trainyard_shared.jobstore import JobStore
from trainyard_submission.joblist import BucketReader, LatestValues

log = logging.getLogger("trainyard.ui.queues")

PENDING_STATES = ("submitted", "queued", "requeued")
HOLDING_STATES = ("scheduled", "running")
MAX_HOLDING_READ = 2000  # records read for usage per look (a cluster's running jobs, not its backlog)
MAX_QUEUES = 200  # queues with a history (more are shown now, without a chart)
RESOURCES = ("cpu", "memory", "gpu")


@dataclass
class QueueNow:
    """One queue at one moment."""

    pending: int = 0
    holding: int = 0
    used: dict[str, float] = field(default_factory=lambda: dict.fromkeys(RESOURCES, 0.0))
    oldest_pending_ns: int | None = None

    def longest_wait_seconds(self, now: datetime) -> float:
        if self.oldest_pending_ns is None:
            return 0.0
        return max(0.0, now.timestamp() - self.oldest_pending_ns / 1e9)


async def index_entries(index: JobIndex, states: Iterable[str]) -> list[IndexEntry]:
    """Every entry of ``states`` in any queue (unverified), one ordered read per state."""
    last = (await index.js.stream_info(index.stream)).state.last_seq
    found: list[IndexEntry] = []
    for state in states:
        await index.read_all(index.filter(None, state), last, found.append)
    return found


async def queues_now(index: JobIndex, store: JobStore, queue_names: Iterable[str]) -> dict[str, QueueNow]:
    """Each of ``queue_names`` (and any queue with a holding job): its counts and what its holding
    jobs use. The waiting jobs are counted, not read: a backlog of any size costs the same."""
    out: dict[str, QueueNow] = {}
    names = list(dict.fromkeys(queue_names))
    asked = [(q, s) for q in names for s in PENDING_STATES]
    for (queue, _state), (count, first) in zip(
        asked, await asyncio.gather(*(index.count(q, s) for q, s in asked)), strict=True
    ):
        now = out.setdefault(queue, QueueNow())
        now.pending += count
        # the entry stored first in a state: the job that has waited longest in it, whose
        # submission dates the queue's wait (a requeued job keeps its submission time)
        if first is not None and (
            now.oldest_pending_ns is None or first.submitted_ns < now.oldest_pending_ns
        ):
            now.oldest_pending_ns = first.submitted_ns
    holding = await index_entries(index, HOLDING_STATES)
    job_ids = list(dict.fromkeys(e.job_id for e in holding))[:MAX_HOLDING_READ]
    for found in await asyncio.gather(*(store.get(j) for j in job_ids)):
        if found is None or found[0].state.value not in HOLDING_STATES:
            continue  # ended since its entry was read
        record = found[0]
        now = out.setdefault(record.spec.queue, QueueNow())
        now.holding += 1
        r, replicas = record.spec.resources, record.spec.replicas
        now.used["cpu"] += r.cpu * replicas
        now.used["memory"] += r.memory * replicas
        now.used["gpu"] += r.gpu * replicas
    return out


@dataclass(frozen=True)
class Sample:
    at: datetime
    pending: int
    longest_wait_seconds: float


class QueueHistory:
    """Samples per queue, the newest ``keep`` of each, for at most MAX_QUEUES queues."""

    def __init__(self, keep: int) -> None:
        self.keep = max(2, keep)
        self.samples: dict[str, deque[Sample]] = {}

    def add(self, at: datetime, now: dict[str, QueueNow], known: Iterable[str]) -> None:
        """One sample of every queue known or seen (0 for one with nothing pending)."""
        for queue in dict.fromkeys([*known, *now]):
            ring = self.samples.get(queue)
            if ring is None:
                if len(self.samples) >= MAX_QUEUES:
                    continue
                ring = self.samples[queue] = deque(maxlen=self.keep)
            seen = now.get(queue, QueueNow())
            ring.append(Sample(at, seen.pending, seen.longest_wait_seconds(at)))

    def of(self, queue: str) -> list[Sample]:
        return list(self.samples.get(queue, ()))


class QueueSampler:
    """The task that samples the queues into a :class:`QueueHistory` every ``every`` seconds."""

    def __init__(
        self,
        index: JobIndex,
        store: JobStore,
        queue_names: Callable[[], Iterable[str]],
        every: float,
        hours: float,
    ) -> None:
        self.index, self.store, self.every = index, store, every
        self.queue_names = queue_names  # the configured queues (sampled at 0 while empty)
        self.history = QueueHistory(int(hours * 3600 / every))
        self.task: asyncio.Task[None] | None = None
        self.stopping = False

    def start(self) -> QueueSampler:
        self.task = asyncio.create_task(self._run(), name="ui-queue-sampler")
        return self

    async def sample(self) -> None:
        now = await queues_now(self.index, self.store, self.queue_names())
        self.history.add(datetime.now(UTC), now, self.queue_names())

    async def _run(self) -> None:
        while not self.stopping:
            try:
                await self.sample()
            except Exception as exc:  # a slow or lost NATS connection: the next sample tries again
                log.warning("queue sample failed", extra={"error": repr(exc)[:300]})
            await asyncio.sleep(self.every)

    async def stop(self) -> None:
        """End the task; a cancellation a NATS call turns into another error ends it too (the
        loop checks ``stopping``), and the service's shutdown never waits on it for long."""
        self.stopping = True
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait({self.task}, timeout=5)


def replicas_on(record: JobRecord, executor_id: str) -> int:
    """How many of the job's replicas run on ``executor_id``: a split gang's member's ranks, else all."""
    gang = record.split_gang() if record.gang is not None else None
    if gang is not None:
        return sum(len(m.ranks) for m in gang.members if m.executor_id == executor_id)
    return record.spec.replicas


async def executor_allocations(reader: BucketReader, store: JobStore) -> dict[str, dict[str, float]]:
    """Per executor, what the attempts its heartbeat lists hold (resources times its replicas
    there), from their records: the executors page's allocation against capacity."""
    beats = []
    for _key, (value, _revision) in (await reader.read(LatestValues())).values.items():
        with contextlib.suppress(ValidationError):
            beats.append(ExecutorHeartbeat.model_validate_json(value))
    job_ids = list(dict.fromkeys(ref.job_id for beat in beats for ref in beat.running))[:MAX_HOLDING_READ]
    records = {
        j: found[0]
        for j, found in zip(job_ids, await asyncio.gather(*map(store.get, job_ids)), strict=True)
        if found
    }
    out: dict[str, dict[str, float]] = {}
    for beat in beats:
        held = out[beat.executor_id] = dict.fromkeys(RESOURCES, 0.0)
        for ref in beat.running:
            record = records.get(ref.job_id)
            if record is None:
                continue
            n, r = replicas_on(record, beat.executor_id), record.spec.resources
            held["cpu"] += r.cpu * n
            held["memory"] += r.memory * n
            held["gpu"] += r.gpu * n
    return out
