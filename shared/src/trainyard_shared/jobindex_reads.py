"""The jobs index's entries and how they are read back from the server (split from jobindex.py,
which writes them and ranks them into pages: docs/performance.md, "The jobs index").

Every read here is a direct get (ADR-31) without headers (``no_hdr``: nats-py's header parsing
would cost more than the rest of the read) or one ordered consumer (:meth:`IndexReads.read_all`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from pydantic_core import from_json

from trainyard_contracts import JobRecord, Subjects

log = logging.getLogger("trainyard.jobindex")

END = 2**63  # read to the end of the stream
READ_CHUNK = 512  # entries asked per direct get request
READ_ALL_QUIET_SECONDS = 1.0  # a read of every entry with no delivery this long asks the server why
# how an arrival entry's body ends (``IndexEntry.encode`` writes "a" last): a read that wants none
# skips them undecoded (half the entries of an unfiltered read)
ARRIVAL_TAIL = b',"a":1}'


def to_ns(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000


@dataclass(frozen=True)
class IndexEntry:
    job_id: str
    queue: str
    state: str
    submitted_ns: int
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    written_ns: int = 0  # the writer's clock when it wrote the entry (a stale one is removed later)
    arrival: bool = False  # a job's arrival entry (its state: the one it was created in), not a state's

    @classmethod
    def of(cls, record: JobRecord, written_ns: int = 0, arrival: bool = False) -> IndexEntry:
        return cls(
            record.job_id,
            record.spec.queue,
            record.state.value,
            to_ns(record.submitted_at),
            record.spec.name or "",
            dict(record.spec.labels),
            written_ns,
            arrival,
        )

    def encode(self) -> bytes:
        body: dict[str, Any] = {"j": self.job_id, "q": self.queue, "s": self.state, "t": self.submitted_ns}
        if self.name:
            body["n"] = self.name
        if self.labels:
            body["l"] = self.labels
        if self.written_ns:
            body["w"] = self.written_ns
        if self.arrival:
            body["a"] = 1  # last: ARRIVAL_TAIL
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> IndexEntry:
        body = from_json(data)  # pydantic's parser: a page may read thousands
        return cls(
            body["j"],
            body["q"],
            body["s"],
            int(body["t"]),
            body.get("n", ""),
            body.get("l") or {},
            int(body.get("w", 0)),
            bool(body.get("a")),
        )

    @property
    def key(self) -> tuple[str, str, str]:
        """Its subject's tokens: at most one entry per key is stored."""
        return (self.queue, self.state, self.job_id)

    @property
    def rank(self) -> tuple[int, str]:
        return (self.submitted_ns, self.job_id)

    def describes(self, record: JobRecord) -> bool:
        """Whether ``record`` is still what this entry says (else the entry is stale)."""
        return (
            record.state.value == self.state
            and record.spec.queue == self.queue
            and to_ns(record.submitted_at) == self.submitted_ns
        )


class IndexReads:
    """The server reads of the jobs index stream (mixed into :class:`~trainyard_shared.jobindex.JobIndex`)."""

    nc: Client
    js: JetStreamContext
    stream: str
    subjects: Subjects

    def filter(self, queue: str | None, state: str | None) -> str:
        return f"{self.subjects.prefix}.jobidx.{queue or '*'}.{state or '*'}.*"

    async def read_all(self, subject: str, last: int, offer: Callable[[IndexEntry], None]) -> None:
        """Every entry on ``subject`` (a filter) stored up to ``last``, through one ordered consumer:
        a batched direct get from the start of a large index costs the server a walk of every
        subject per message, a consumer only a filter match.

        The read ends with the delivery that says nothing is pending, or, when none will (the
        entries still to deliver were removed under the read: jobs moving on), once a quiet moment
        finds the consumer with nothing pending and nothing undelivered here."""
        done = asyncio.Event()
        delivered = 0

        async def on_message(msg: Msg) -> None:
            nonlocal delivered
            delivered += 1
            if done.is_set():
                return
            meta = msg.metadata
            try:
                offer(IndexEntry.decode(msg.data))
            except (KeyError, ValueError) as exc:
                log.error("unreadable index entry", extra={"error": repr(exc)[:300]})
            if meta.num_pending == 0 or meta.sequence.stream >= last:
                done.set()

        sub = await self.js.subscribe(
            subject,
            stream=self.stream,
            cb=on_message,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            inactive_threshold=10.0,  # the server removes it this long after the read
        )
        try:
            info = await sub.consumer_info()
            if not info.num_pending and not (info.delivered and info.delivered.consumer_seq):
                return  # nothing on the filter: no delivery will say so
            while not done.is_set():
                seen = delivered
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), READ_ALL_QUIET_SECONDS)
                if done.is_set() or delivered != seen or sub.pending_msgs:
                    continue
                if not (await sub.consumer_info()).num_pending and delivered == seen and not sub.pending_msgs:
                    return  # what was pending was removed: no delivery will say the read is over
        finally:
            await sub.unsubscribe()

    async def count(self, queue: str | None, state: str | None) -> tuple[int, IndexEntry | None]:
        """How many entries ``queue`` and ``state`` hold (None: any), and the first stored (see
        :meth:`first_on`)."""
        held, first, _ = await self.first_on(self.filter(queue, state))
        return held, first

    async def first_on(self, subject: str) -> tuple[int, IndexEntry | None, int]:
        """How many entries ``subject`` (a filter) holds, the first stored and its sequence (0:
        none): one direct get, whose ``Nats-Num-Pending`` is the server's count after it
        (unverified: stale ones count)."""
        request = {"seq": 1, "batch": 1, "next_by_subj": subject}
        reply = await self.nc.request(
            f"$JS.API.DIRECT.GET.{self.stream}", json.dumps(request).encode(), timeout=10.0
        )
        headers = reply.headers or {}
        if not reply.data or headers.get("Status"):  # 404: nothing on the filter
            return 0, None, 0
        try:
            first: IndexEntry | None = IndexEntry.decode(reply.data)
        except (KeyError, ValueError):
            first = None
        held = int(headers.get("Nats-Num-Pending", 0) or 0) + 1
        return held, first, int(headers.get("Nats-Sequence", 0) or 0)

    async def stored_at(self, seq: int) -> int:
        """The server's time (ns) when the message at ``seq`` (or the next one there) was stored."""
        request = {"seq": seq, "next_by_subj": f"{self.subjects.prefix}.jobidx.>"}
        reply = await self.nc.request(
            f"$JS.API.DIRECT.GET.{self.stream}", json.dumps(request).encode(), timeout=10.0
        )
        stamp = (reply.headers or {}).get("Nats-Time-Stamp")
        return _ns(stamp) if stamp else 0

    async def read_range(
        self, subject: str | None, low: int, high: int, arrivals: bool = True
    ) -> list[IndexEntry]:
        """The entries on ``subject`` (a filter; None: all) stored from sequence ``low`` through ``high``, in
        order, and maybe some stored after ``high`` (a read asks for a number of entries, not a
        range; :class:`Best` counts an entry read twice once); ``arrivals=False``: without the
        arrival entries, skipped undecoded."""
        out: list[IndexEntry] = []
        start = low
        while start <= high:
            batch = min(READ_CHUNK, high - start + 1)
            chunk, reached = await self._direct_batch(subject, start, batch, arrivals)
            out += chunk
            if not reached or reached >= high or (subject is not None and len(chunk) < batch):
                # no more, or the range covered (unfiltered, a marker or a skipped arrival entry
                # is a message, not an entry: the batch goes on from the last message it held)
                break
            start = reached + 1
        return out

    async def _direct_batch(
        self, subject: str | None, start: int, batch: int, arrivals: bool = True
    ) -> tuple[list[IndexEntry], int]:
        """One batched direct get (ADR-31) without headers (nats-py's header parsing would cost
        more than the rest of the read): up to ``batch`` entries on ``subject`` from ``start``, and
        the sequence of the last one (the end-of-batch status carries it)."""
        inbox = self.nc.new_inbox()
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        out: list[IndexEntry] = []

        async def on_message(msg: Msg) -> None:
            if msg.headers:  # a status: the end of the batch (204), or nothing there (404)
                if not done.done():
                    done.set_result(int(msg.headers.get("Nats-Last-Sequence", 0) or 0))
                return
            if not msg.data or (not arrivals and msg.data.endswith(ARRIVAL_TAIL)):
                return  # a marker, or an arrival entry not wanted
            try:
                out.append(IndexEntry.decode(msg.data))
            except (KeyError, ValueError) as exc:
                log.error("unreadable index entry", extra={"error": repr(exc)[:300]})

        sub = await self.nc.subscribe(inbox, cb=on_message)
        try:
            request: dict[str, Any] = {"batch": batch, "seq": start, "no_hdr": True}
            if subject is not None:
                request["next_by_subj"] = subject
            await self.nc.publish(
                f"$JS.API.DIRECT.GET.{self.stream}", json.dumps(request).encode(), reply=inbox
            )
            reached = await asyncio.wait_for(done, 10.0)
        finally:
            await sub.unsubscribe()
        return out, reached


def _ns(stamp: str) -> int:
    """A direct get's ``Nats-Time-Stamp`` (RFC 3339, nanoseconds) as ns since the epoch."""
    whole, _, rest = stamp.rstrip("Z").partition(".")
    return to_ns(datetime.fromisoformat(whole).replace(tzinfo=UTC)) + int((rest + "000000000")[:9])
