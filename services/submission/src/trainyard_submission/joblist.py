"""``GET /jobs``: the newest matching job records, read from the jobs bucket when asked.

The submission service keeps no copy of the bucket: following every record update cost four
deliveries and parses per job on the job path, only to answer a listing now and then. A listing
instead reads the bucket once, through an ordered consumer that delivers each key's latest value,
and stops when it has reached what the bucket held when the listing started.

Memory stays bounded by ``limit``: each value is first read for the few fields a filter and the
order need (:class:`RecordHead`); only the newest ``limit`` matches are kept, as bytes, and only
those are validated as full :class:`JobRecord` documents.

A key can be delivered more than once: its value when the read began, then the writes stored
before the read's end point. Each key is one row, its latest value read (a later value replaces
the kept one; a record that leaves the filtered state during the read leaves the answer, which may
then hold fewer than ``limit`` rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from datetime import datetime
from typing import Any, Protocol, TypeVar

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainyard_contracts import JobRecord
from trainyard_shared.jobindex import Reversed

log = logging.getLogger("trainyard.submission.joblist")

# a KV value's operation header; a delete or purge marker, or a server's expiry marker, is no record
KV_OPERATION = "KV-Operation"
MARKER_REASON = "Nats-Marker-Reason"


class _SpecHead(BaseModel):
    model_config = ConfigDict(extra="ignore")

    queue: str = "default"
    name: str = ""
    labels: dict[str, str] = Field(default_factory=dict)


class RecordHead(BaseModel):
    """The fields of a stored job record that filtering and ordering need; the rest is skipped."""

    model_config = ConfigDict(extra="ignore")

    job_id: str
    state: str
    submitted_at: datetime
    spec: _SpecHead


# (submitted_at, job id), or that wrapped in Reversed: the two never meet in one comparison
Rank = Any


class NewestMatches:
    """The newest ``limit`` records matching ``state``, ``queue`` and ``name`` (None: any) and
    carrying every one of ``labels``, fed raw values.

    Newest means the latest ``submitted_at``, then the greatest job id (the order ``GET /jobs``
    has always answered in); ``oldest_first`` turns the order round. ``past`` is a page boundary
    (``submitted_at``, job id): only records after it in that order are kept (keyset paging: the
    next page starts past the last row shown). A min-heap of at most ``limit`` entries, ranked so
    that its top is the first to drop, holds the kept values.
    """

    def __init__(
        self,
        state: str | None,
        queue: str | None,
        limit: int,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        oldest_first: bool = False,
        past: tuple[datetime, str] | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.state, self.queue, self.limit = state, queue, limit
        self.name, self.labels = name, dict(labels or {})
        self.oldest_first = oldest_first
        self._past = self._rank(past) if past is not None else None
        self._heap: list[tuple[Rank, str, bytes]] = []  # (rank, key, value)
        self._revisions: dict[str, int] = {}  # the revision of each key whose value is kept
        self.seen = 0

    def _rank(self, key: tuple[datetime, str]) -> Rank:
        return Reversed(key) if self.oldest_first else key

    def offer(self, key: str, value: bytes, revision: int = 0) -> None:
        self.seen += 1
        kept = self._revisions.get(key)
        if kept is not None:
            if revision and revision <= kept:
                return  # not newer than the value kept (an ordered consumer's replay)
            self.discard(key)
        try:
            head = RecordHead.model_validate_json(value)
        except ValidationError as exc:
            log.error("unreadable job record", extra={"job_id": key, "error": str(exc)[:500]})
            return
        if not self._matches(head):
            return
        rank = self._rank((head.submitted_at, head.job_id))
        if self._past is not None and not rank < self._past:
            return  # on a page before this one
        entry = (rank, key, value)
        if len(self._heap) < self.limit:
            heapq.heappush(self._heap, entry)
        elif rank > self._heap[0][0]:
            evicted = heapq.heapreplace(self._heap, entry)
            self._revisions.pop(evicted[1], None)
        else:
            return
        self._revisions[key] = revision

    def _matches(self, head: RecordHead) -> bool:
        if self.state is not None and head.state != self.state:
            return False
        if self.queue is not None and head.spec.queue != self.queue:
            return False
        if self.name is not None and head.spec.name != self.name:
            return False
        return all(head.spec.labels.get(k) == v for k, v in self.labels.items())

    def discard(self, key: str) -> None:
        """Forget ``key``'s kept value (a newer value replaces it, or the key was deleted)."""
        if self._revisions.pop(key, None) is not None:
            self._heap = [entry for entry in self._heap if entry[1] != key]
            heapq.heapify(self._heap)

    def records(self) -> list[JobRecord]:
        """The kept records in order, newest first unless ``oldest_first`` (a value that is not a
        valid record is left out)."""
        rows = []
        for _, key, value in sorted(self._heap, key=lambda e: e[0], reverse=True):
            try:
                rows.append(JobRecord.model_validate_json(value))
            except ValidationError as exc:
                log.error("unreadable job record", extra={"job_id": key, "error": str(exc)[:500]})
        return rows


class Sink(Protocol):
    def offer(self, key: str, value: bytes, revision: int) -> None: ...

    def discard(self, key: str) -> None: ...


S = TypeVar("S", bound=Sink)


class LatestValues:
    """Every key's latest value and its revision, as read (a small bucket: queues, models)."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[bytes, int]] = {}

    def offer(self, key: str, value: bytes, revision: int) -> None:
        self.values[key] = (value, revision)

    def discard(self, key: str) -> None:
        self.values.pop(key, None)


class BucketReader:
    """Reads every key's latest value of one KV bucket, once, and is gone afterwards.

    ``inactive_seconds``: the server removes a consumer this reader could not delete itself (the
    connection dropped mid-read, or the ordered consumer was recreated after a gap) this long after
    nobody listens to it.
    """

    def __init__(self, js: JetStreamContext, bucket: str, inactive_seconds: float = 10.0) -> None:
        self.js = js
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self.prefix = f"$KV.{bucket}."
        self.inactive_seconds = inactive_seconds

    async def read(self, matches: S, timeout: float = 30.0) -> S:
        """Offer each key's latest value to ``matches``, at least as new as when the read began.

        Raises TimeoutError when the read does not finish in ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            caught_up = asyncio.Event()
            consumers: set[str] = set()
            prefix_len = len(self.prefix)
            target: int | None = None  # the stream's last sequence once the consumer exists
            highest = 0

            async def on_message(msg: Msg) -> None:
                nonlocal highest
                if caught_up.is_set():
                    return
                meta = msg.metadata
                consumers.add(meta.consumer)
                headers = msg.headers
                if not headers or (KV_OPERATION not in headers and MARKER_REASON not in headers):
                    matches.offer(msg.subject[prefix_len:], msg.data, meta.sequence.stream)
                else:  # deleted or purged after its value was read: no row
                    matches.discard(msg.subject[prefix_len:])
                highest = max(highest, meta.sequence.stream)
                # num_pending 0: nothing left; the target: what was stored when the consumer
                # existed (a listing during a burst of writes is not chased by the writes after)
                if meta.num_pending == 0 or (target is not None and highest >= target):
                    caught_up.set()

            sub = await self.js.subscribe(
                f"{self.prefix}>",
                stream=self.stream,
                cb=on_message,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                inactive_threshold=self.inactive_seconds,
            )
            try:
                # asked after the consumer was created, never before: the consumer delivers each
                # key's last value as of its creation, in sequence order, then every later write,
                # so the first delivery at or past this sequence comes after every key that
                # existed at its creation (a target taken earlier could stop the read at a key
                # rewritten in between, before a key whose newer value comes later)
                stored = (await self.js.stream_info(self.stream)).state
                target = stored.last_seq
                if stored.messages == 0 and not consumers:
                    # nothing will be delivered to name the consumer: ask its name to remove it
                    consumers.add((await sub.consumer_info()).name)
                if stored.messages == 0 or highest >= target:
                    caught_up.set()
                await caught_up.wait()
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
                for name in consumers:
                    with contextlib.suppress(Exception):
                        await self.js.delete_consumer(self.stream, name)
        return matches
