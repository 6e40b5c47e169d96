"""How the executor reports its attempts (it does not write job records) and learns the outcome.

A report goes on the executor's own subject into the reports stream (acknowledged, so it is kept
until the scheduler applies it); where the executor must know the record before it goes on (a start
runs only once the record says ``running``), it reads the job's key until the record decides. The
scheduler says when it has applied a report (``<prefix>.exec-applied.<executor_id>``, core NATS),
which wakes the reader at once; without that word (lost, or an older scheduler) the key is read
again after 50 ms, then at a doubling pause up to 0.5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol, TypeVar

import nats.errors
from faststream.nats import NatsBroker
from nats.aio.msg import Msg

from trainyard_contracts import JobRecord, Subjects
from trainyard_contracts.reports import ExecutorReport
from trainyard_shared.jobstore import JobStore
from trainyard_shared.natshandle import NatsHandle
from trainyard_shared.publishing import MSG_ID, publish_acked

T = TypeVar("T")
# what the record says to a waiting executor: None while it does not decide yet
Decide = Callable[[JobRecord | None], T | None]
FIRST_READ_SECONDS = 0.05  # unless woken, the record is read again this soon, then ever later
LAST_READ_SECONDS = 0.5


class Reporter(Protocol):
    async def send(self, report: ExecutorReport) -> None:
        """Publish ``report`` durably (returns once the stream holds it)."""

    async def settle(self, job_id: str, decide: Decide[T], timeout: float) -> T:
        """What ``decide`` makes of the job's record once it decides; raises
        ``nats.errors.TimeoutError`` when it has not after ``timeout`` seconds."""


class BusReporter:
    """Reports on ``<prefix>.exec-report.<executor_id>.<job_id>``; settles by watching the key."""

    def __init__(self, broker: NatsBroker, subjects: Subjects, store: JobStore) -> None:
        self.broker = broker
        self.subjects = subjects
        self.store = store
        self._readers: dict[str, set[asyncio.Event]] = {}  # job id -> the settles waiting on it

    async def listen(self, executor_id: str) -> None:
        """Hear the scheduler's word on ``exec-applied.<executor_id>``: a plain core subscription
        with a callback (no handler machinery: it is on every start's path, and only wakes)."""

        async def heard(msg: Msg) -> None:
            self.applied(msg.data.decode(errors="replace"))

        await NatsHandle(self.broker).client.subscribe(self.subjects.exec_applied(executor_id), cb=heard)

    def applied(self, job_id: str) -> None:
        """The scheduler applied a report of ``job_id``: its waiting readers read the record now."""
        for woken in self._readers.get(job_id, ()):
            woken.set()

    async def send(self, report: ExecutorReport) -> None:
        await publish_acked(
            self.broker,
            self.subjects.exec_report(report.executor_id, report.job_id),
            report.model_dump_json().encode(),
            {MSG_ID: report.msg_id(), "content-type": "application/json"},
            self.subjects.streams.reports,
        )

    async def settle(self, job_id: str, decide: Decide[T], timeout: float) -> T:
        # reads of the key (a direct get each), not a watch: a watch is a consumer on the jobs
        # bucket's stream per start, which under load met the server's consumer limit (starts
        # dead-lettered) and cost more than the few reads the scheduler's ~ms takes
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pause = FIRST_READ_SECONDS
        # listening before the first read: a word that comes between the read and the wait is kept
        woken = asyncio.Event()
        self._readers.setdefault(job_id, set()).add(woken)
        try:
            while True:
                found = await self.store.get(job_id)
                verdict = decide(found[0] if found is not None else None)
                if verdict is not None:
                    return verdict
                left = deadline - loop.time()
                if left <= 0:
                    raise nats.errors.TimeoutError
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(pause, left))
                if woken.is_set():
                    woken.clear()
                else:
                    pause = min(pause * 2, LAST_READ_SECONDS)
        finally:
            readers = self._readers.get(job_id)
            if readers is not None:
                readers.discard(woken)
                if not readers:
                    del self._readers[job_id]


async def record_changes(store: JobStore, job_id: str, recheck: float) -> AsyncGenerator[JobRecord | None]:
    """The job's record (None: gone) now and at each change, through a KV watch on its key, and
    read again every ``recheck`` seconds in case the watch stalls. Use with ``contextlib.aclosing``
    so the watch stops when the reader does."""
    watcher: Any = await store.kv.watch(job_id)  # nats-py's KeyWatcher is not annotated
    try:
        while True:
            try:
                entry = await watcher.updates(timeout=recheck)
            except nats.errors.TimeoutError:
                found = await store.get(job_id)
                yield found[0] if found is not None else None
                continue
            if entry is None:
                continue  # the watch's "caught up" marker
            yield JobRecord.model_validate_json(entry.value) if entry.value else None
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()
