"""How the executor reports its attempts (it does not write job records) and learns the outcome.

A report goes on the executor's own subject into the reports stream (acknowledged, so it is kept
until the scheduler applies it); where the executor must know the record before it goes on (a start
runs only once the record says ``running``), it waits until the record decides. The scheduler says
when it has applied a report (``<prefix>.exec-applied.<executor_id>``, core NATS), and its word
carries the record and its revision (trainyard_shared.appliedword): the waiting reader decides on
that copy without reading the key. A carried copy older than one this executor knew when it began
to wait (a late word of an earlier report) is not decided on: the key is read instead, as it is
after a word that carries nothing (an older scheduler, or a record too big to carry). Without any
word (lost) the key is read again after 50 ms, then at a doubling pause up to 0.5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol, TypeVar

import nats.errors
import pydantic
from faststream.nats import NatsBroker
from nats.aio.msg import Msg

from trainyard_contracts import JobRecord, Subjects
from trainyard_contracts.reports import ExecutorReport
from trainyard_shared import appliedword
from trainyard_shared.appliedword import AppliedWord
from trainyard_shared.jobstore import JobStore
from trainyard_shared.natshandle import NatsHandle
from trainyard_shared.publishing import MSG_ID, publish_acked

T = TypeVar("T")
# what the record says to a waiting executor: None while it does not decide yet
Decide = Callable[[JobRecord | None], T | None]
FIRST_READ_SECONDS = 0.05  # unless woken, the record is read again this soon, then ever later
LAST_READ_SECONDS = 0.5
EARLY_WORDS = 1024  # words heard while nobody waited (it came before its settle began), kept unparsed


class Reporter(Protocol):
    async def send(self, report: ExecutorReport) -> None:
        """Publish ``report`` durably (returns once the stream holds it)."""

    async def settle(self, job_id: str, decide: Decide[T], timeout: float) -> T:
        """What ``decide`` makes of the job's record once it decides; raises
        ``nats.errors.TimeoutError`` when it has not after ``timeout`` seconds."""


class _Waiter:
    """One waiting settle: woken by a word; ``carried``, the newest record a word brought."""

    __slots__ = ("carried", "woken")

    def __init__(self) -> None:
        self.woken = asyncio.Event()
        self.carried: tuple[JobRecord, int] | None = None

    def hear(self, carried: tuple[JobRecord, int] | None) -> None:
        if carried is not None and (self.carried is None or carried[1] > self.carried[1]):
            self.carried = carried
        self.woken.set()

    def take(self, floor: int | None) -> tuple[JobRecord, int] | None:
        """The carried record if it is no older than ``floor`` (what this settle knew), else None."""
        carried, self.carried = self.carried, None
        self.woken.clear()
        if carried is None or floor is None or carried[1] < floor:
            return None
        return carried


class BusReporter:
    """Reports on ``<prefix>.exec-report.<executor_id>.<job_id>``; settles on the scheduler's word
    (the record it carries), or by reading the key."""

    def __init__(self, broker: NatsBroker, subjects: Subjects, store: JobStore) -> None:
        self.broker = broker
        self.subjects = subjects
        self.store = store
        self._readers: dict[str, set[_Waiter]] = {}  # job id -> the settles waiting on it
        self._early: OrderedDict[str, AppliedWord] = OrderedDict()

    async def listen(self, executor_id: str) -> None:
        """Hear the scheduler's word on ``exec-applied.<executor_id>``: a plain core subscription
        with a callback (no handler machinery: it is on every start's path)."""

        async def heard(msg: Msg) -> None:
            self.applied(appliedword.decode(msg.data, msg.headers))

        await NatsHandle(self.broker).client.subscribe(self.subjects.exec_applied(executor_id), cb=heard)

    def applied(self, word: AppliedWord | str) -> None:
        """The scheduler applied a report of the word's job: its waiting readers decide on the
        record the word carries, or read the record now. A bare job id: the older word."""
        if isinstance(word, str):
            word = AppliedWord(word)
        waiters = self._readers.get(word.job_id)
        if not waiters:
            # the word can outrun the stream's acknowledgement of the report: kept for the settle
            # about to begin, not parsed (most are words nobody waits for)
            self._early[word.job_id] = word
            self._early.move_to_end(word.job_id)
            if len(self._early) > EARLY_WORDS:
                self._early.popitem(last=False)
            return
        self._tell(*waiters, word=word)

    def _tell(self, *waiters: _Waiter, word: AppliedWord) -> None:
        carried = self._carried(word)
        if carried is not None:
            self.store.remember(*carried)  # later compare-and-sets and starts try it first
        for waiter in waiters:
            waiter.hear(carried)

    @staticmethod
    def _carried(word: AppliedWord) -> tuple[JobRecord, int] | None:
        if word.body is None or word.revision <= 0:
            return None
        try:
            record = JobRecord.model_validate_json(word.body)
        except pydantic.ValidationError:
            return None  # a record this release cannot read: the key is read instead
        return (record, word.revision) if record.job_id == word.job_id else None

    async def send(self, report: ExecutorReport) -> None:
        await publish_acked(
            self.broker,
            self.subjects.exec_report(report.executor_id, report.job_id),
            report.model_dump_json().encode(),
            {MSG_ID: report.msg_id(), "content-type": "application/json"},
            self.subjects.streams.reports,
        )

    async def settle(self, job_id: str, decide: Decide[T], timeout: float) -> T:
        # the word's record, else reads of the key (a direct get each), not a watch: a watch is a
        # consumer on the jobs bucket's stream per start, which under load met the server's
        # consumer limit (starts dead-lettered) and cost more than the few reads it saved
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pause = FIRST_READ_SECONDS
        # listening before the first look: a word that comes between it and the wait is kept
        waiter = _Waiter()
        self._readers.setdefault(job_id, set()).add(waiter)
        # a carried record older than what this executor knew when it sent the report may predate
        # it (a late word of an earlier report): the decisions are pure checks of a record written
        # since; with no known copy, the key is read first and its revision is the floor
        known = self.store.known(job_id)
        floor = known[1] if known is not None else None
        early = self._early.pop(job_id, None)
        if early is not None:
            self._tell(waiter, word=early)
        # no read before the word when a floor is known: a read this soon after the report finds
        # it unapplied (the scheduler's compare-and-set is still on its way); a lost word costs
        # the read at the first pause
        carried = waiter.take(floor) if early is not None else None
        look = (early is not None and carried is None) or floor is None
        try:
            while True:
                verdict = None
                if carried is not None:
                    floor = carried[1]
                    verdict = decide(carried[0])
                elif look:
                    found = await self.store.get(job_id)
                    if found is not None:
                        floor = max(floor or 0, found[1])
                    verdict = decide(found[0] if found is not None else None)
                if verdict is not None:
                    return verdict
                left = deadline - loop.time()
                if left <= 0:
                    raise nats.errors.TimeoutError
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.woken.wait(), min(pause, left))
                look = True
                if waiter.woken.is_set():
                    carried = waiter.take(floor)
                else:
                    carried = None
                    pause = min(pause * 2, LAST_READ_SECONDS)
        finally:
            readers = self._readers.get(job_id)
            if readers is not None:
                readers.discard(waiter)
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
