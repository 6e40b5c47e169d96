"""The jobs index: which jobs are in which queue and state, kept by the services that write records,
read by the job list pages (``GET /v1/jobs``, the web UI's jobs table) without reading every record.

Structure (docs/performance.md, "The jobs index"): one stream, ``<P>_JOBIDX``, one subject per job
and state, ``<p>.jobidx.<queue>.<state>.<job_id>``, at most one message each
(``max_msgs_per_subject=1``). The message is a small entry: the job's id, queue, state, submission
time (ns), name and labels, so that filters on them need no record read. A listing of a queue
and/or a state is a subject filter (``<p>.jobidx.<queue|*>.<state|*>.*``), read with batched
direct gets by stream sequence; nothing else is scanned.

Writing (:class:`JobIndex.enter` / :class:`JobIndex.leave`, called by ``JobStore`` around each
compare-and-set that changes a record's queue or state):

1. the entry for the new state is published *before* the record's compare-and-set,
2. the record is written,
3. the entry of the old state is purged, only the messages stored before step 1's (a purge
   filtered on the old subject, up to step 1's sequence: a later return to that state, whose entry
   is newer, is kept).

So every crash point leaves extra entries, never a missing one. The invariant a reader relies on:
**every record has an entry for its current queue and state; an entry whose record is missing or
says another queue, state or submission time is stale and skipped** (read-time verification). A
stale entry comes from a compare-and-set that lost (its state never happened) or a crash between
the steps; the job's next entry in that state replaces it (one message per subject), and its
next state change removes it. One whose state the job never reaches again (a lost race to a state
the job then skipped) would stay: a reader removes a stale entry written more than a minute ago
(each entry carries its writer's clock, ``w``; a younger one may belong to a compare-and-set in
flight), by a purge of its subject below the sequence the reader started from.

Order: the rows are ordered by (submission time, job id), newest first, as ``GET /v1/jobs``
always was. The stream orders entries by when they were written, not by submission time (a job
enters ``failed`` long after it was submitted), so a newest-first page reads the filter backwards in
windows of sequences and stops when no older entry can rank higher: every entry stored before a
window's first sequence was stored before the server's time there, and its job was submitted before
its entry was stored (the submission time is taken before the record and its first entry are
written), give or take how far the submitting service's clock runs ahead of nats-server's
(``clock_skew_seconds``). Oldest first walks the arrival entries (jobindex_oldest.py): a state's
have no such bound. Entries are read without headers (``no_hdr``): nats-py's parsing costs more.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from trainyard_contracts import JobRecord, Subjects
from trainyard_shared.jobindex_reads import END as END
from trainyard_shared.jobindex_reads import READ_CHUNK as READ_CHUNK
from trainyard_shared.jobindex_reads import IndexEntry as IndexEntry
from trainyard_shared.jobindex_reads import IndexReads
from trainyard_shared.jobindex_reads import to_ns as to_ns

log = logging.getLogger("trainyard.jobindex")

FIRST_WINDOW = 256  # stream sequences a newest-first page reads first (then half as many more each time)
STALE_GRACE_NS = 60 * 10**9
# an arrival entry acknowledged within this of its job's submission is on time: one stored later in
# the stream holds a submission at most this (and the clocks' skew) before it (jobindex_oldest.py)
ARRIVAL_LATE_NS = 2 * 10**9
MAX_SELECTIONS = 8  # a page's selections when entries keep changing under it (then: what verified)


@dataclass(frozen=True)
class IndexQuery:
    """What a page asks: filters (None: any), how many rows, the order and the page boundary
    (``past``: rows strictly after this (submission ns, job id) in the page's order)."""

    queue: str | None = None
    state: str | None = None
    name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    limit: int = 100
    oldest_first: bool = False
    past: tuple[int, str] | None = None

    def holds(self, record: JobRecord, entry: IndexEntry) -> bool:
        """Whether ``record`` itself belongs on this page where ``entry`` (its job's, stale: the
        job moved on while the page was read) ranks it: its queue and state pass the filters and
        its rank is the entry's. The record is the truth, so such a job is listed from it."""
        return (
            (self.queue is None or record.spec.queue == self.queue)
            and (self.state is None or record.state.value == self.state)
            and to_ns(record.submitted_at) == entry.submitted_ns
        )

    def matches(self, entry: IndexEntry) -> bool:
        if self.name is not None and entry.name != self.name:
            return False
        if not all(entry.labels.get(k) == v for k, v in self.labels.items()):
            return False
        if self.past is not None:
            return entry.rank > self.past if self.oldest_first else entry.rank < self.past
        return True


class Best:
    """The first ``want`` entries of a query's order among those offered (pure; a bounded heap).
    An entry offered again (read twice by overlapping reads) counts once."""

    def __init__(self, query: IndexQuery, want: int, skip: set[tuple[str, str, str]]) -> None:
        self.query, self.want, self.skip = query, want, skip
        self._heap: list[tuple[Any, tuple[str, str, str], IndexEntry]] = []  # top: the first to drop
        self._kept: set[tuple[str, str, str]] = set()
        self.seen = 0

    def _key(self, entry: IndexEntry) -> Any:
        # newest first keeps the greatest ranks: the heap's top is the least; oldest first the other way
        return Reversed(entry.rank) if self.query.oldest_first else entry.rank

    def offer(self, entry: IndexEntry) -> None:
        self.seen += 1
        key = entry.key
        if key in self.skip or key in self._kept or not self.query.matches(entry):
            return
        item = (self._key(entry), key, entry)
        if len(self._heap) < self.want:
            heapq.heappush(self._heap, item)
        elif item[0] > self._heap[0][0]:
            self._kept.discard(heapq.heapreplace(self._heap, item)[1])
        else:
            return
        self._kept.add(key)

    @property
    def full(self) -> bool:
        return len(self._heap) >= self.want

    def floor_ns(self) -> int:
        """The submission time of the last kept entry (the one a better entry would push out)."""
        return self._heap[0][2].submitted_ns

    def entries(self) -> list[IndexEntry]:
        return [e for _, _, e in sorted(self._heap, key=lambda item: item[0], reverse=True)]


class Reversed:
    """A rank (a time, then a job id) that orders the other way round: a heap that keeps the
    greatest keeps the oldest with it."""

    __slots__ = ("key",)

    def __init__(self, key: tuple[Any, str]) -> None:
        self.key = key

    def __lt__(self, other: Reversed) -> bool:
        return other.key < self.key

    def __le__(self, other: Reversed) -> bool:
        return other.key <= self.key

    def __gt__(self, other: Reversed) -> bool:
        return other.key > self.key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reversed) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)


RecordReader = Callable[[str], Awaitable[JobRecord | None]]


class JobIndex(IndexReads):
    """Writes and reads the jobs index stream (see the module's docstring for the invariant)."""

    def __init__(
        self, nc: Client, js: JetStreamContext, subjects: Subjects, clock_skew_seconds: float = 0.25
    ) -> None:
        self.nc, self.js, self.subjects = nc, js, subjects
        self.stream = subjects.streams.jobindex
        self.skew_ns = int(clock_skew_seconds * 1e9)
        self._arrivals_built = False

    def subject(self, queue: str, state: str, job_id: str) -> str:
        return f"{self.subjects.prefix}.jobidx.{queue}.{state}.{job_id}"

    def arrival_subject(self, queue: str, job_id: str, late: bool = False) -> str:
        """Two tokens after ``jobidx`` (a state's entry has three: no state filter matches it), four late."""
        tail = f"late.{queue}.{job_id}.arrival" if late else f"{queue}.{job_id}"
        return f"{self.subjects.prefix}.jobidx.{tail}"

    def arrivals_filter(self, queue: str | None, late: bool = False) -> str:
        return self.arrival_subject(queue or "*", "*", late)

    # -- writing --------------------------------------------------------------------------------

    async def enter(self, record: JobRecord) -> int:
        """Publish ``record``'s entry for its queue and state (before its compare-and-set); the
        stream sequence it got."""
        entry = IndexEntry.of(record, time.time_ns())
        ack = await self.js.publish(self.subject(entry.queue, entry.state, entry.job_id), entry.encode())
        if ack.stream != self.stream:
            raise RuntimeError(f"index entry stored in {ack.stream}, not {self.stream}")
        return ack.seq

    async def arrive(self, record: JobRecord) -> None:
        """Publish ``record``'s arrival entry, once, at its creation (jobindex_oldest.py): on time if
        stored within ARRIVAL_LATE_NS of its submission (as the ack's time or the server's stamp say)."""
        submitted = to_ns(record.submitted_at)
        entry = IndexEntry.of(record, time.time_ns(), arrival=True)
        if entry.written_ns - submitted <= ARRIVAL_LATE_NS:
            ack = await self.js.publish(self.arrival_subject(entry.queue, entry.job_id), entry.encode())
            if (
                time.time_ns() - submitted <= ARRIVAL_LATE_NS
                or await self.stored_at(ack.seq) - submitted <= ARRIVAL_LATE_NS
            ):
                return  # stored before the acknowledgement came (or the server says when)
        await self.js.publish(self.arrival_subject(entry.queue, entry.job_id, late=True), entry.encode())

    async def leave(self, before: JobRecord, entered_seq: int) -> None:
        """Remove ``before``'s entry (the state the record left): the messages on its subject stored
        before the new entry (``entered_seq``), so a later return to that state keeps its entry.

        Sent without waiting for the answer (a round trip less per state change): a purge that
        fails only leaves a stale entry, which readers skip and the job's next change removes.
        """
        await self._purge_before(
            self.subject(before.spec.queue, before.state.value, before.job_id), entered_seq
        )

    async def _purge_before(self, subject: str, seq: int) -> None:
        """Ask the server to remove what ``subject`` holds below ``seq``, not waiting for its answer."""
        request = json.dumps({"filter": subject, "seq": seq}).encode()
        try:
            await self.nc.publish(f"$JS.API.STREAM.PURGE.{self.stream}", request, reply=self.nc.new_inbox())
        except Exception as exc:
            log.warning("index entry not removed", extra={"subject": subject, "error": repr(exc)})

    async def rebuild(self, records: Iterable[JobRecord], states: bool = True) -> int:
        """Write an entry and an arrival entry for each record (a lost index, or records from
        before the index existed; ``states=False``: the arrival entries only), oldest submission
        first; entries already there are replaced by the same. The number of records."""
        ordered = sorted(records, key=lambda r: (r.submitted_at, r.job_id))
        for start in range(0, len(ordered), 256):
            batch = ordered[start : start + 256]
            await asyncio.gather(*(self.arrive(r) for r in batch), *(self.enter(r) for r in batch if states))
        return len(ordered)

    @property
    def built_marker(self) -> str:
        """A subject no entry filter matches (three tokens after the prefix, not five): present once
        the index covers every record written before it (:meth:`ensure_built`)."""
        return f"{self.subjects.prefix}.jobidx.built"

    @property
    def arrivals_marker(self) -> str:
        """Present once every record written before it has its arrival entry (:meth:`ensure_built`)."""
        return f"{self.subjects.prefix}.jobidx.arrivals"

    async def built(self, marker: str | None = None) -> bool:
        try:
            await self.js.get_msg(self.stream, subject=marker or self.built_marker, direct=True)
        except NotFoundError:
            return False
        return True

    async def arrivals_built(self) -> bool:
        if not self._arrivals_built:  # oldest-first pages walk arrival entries once they are all there
            self._arrivals_built = await self.built(self.arrivals_marker)
        return self._arrivals_built

    async def ensure_built(self, read_records: Callable[[], Awaitable[list[JobRecord]]]) -> int | None:
        """Build the index from the records once (an installation from before it, or an index lost):
        when the marker is missing, write every record's entry and arrival entry, then the markers;
        an index from before arrival entries gets those. Writers running meanwhile write their own
        entries, so none is missed. The number of records written, or None."""
        if await self.built():
            if await self.built(self.arrivals_marker):
                return None
            written = await self.rebuild(await read_records(), states=False)
        else:
            written = await self.rebuild(await read_records())
            await self.js.publish(self.built_marker, b"", stream=self.stream)
        await self.js.publish(self.arrivals_marker, b"", stream=self.stream)
        return written

    # -- reading --------------------------------------------------------------------------------

    async def page(self, query: IndexQuery, read_record: RecordReader) -> list[JobRecord]:
        """The ``query.limit`` first records of the query's order, each verified against its
        record (a stale entry is skipped).

        A job has one rank (its submission time and id) in every state, so a job whose entry was
        stale here has its current entry among the candidates unless it was written while they
        were read: then they are selected again, without the stale entries.
        """
        if query.oldest_first:  # a walk of the arrival entries where it is cheaper (jobindex_oldest.py)
            from trainyard_shared.jobindex_oldest import oldest_page

            walked = await oldest_page(self, query, read_record)
            if walked is not None:
                return walked
        skip: set[tuple[str, str, str]] = set()
        rows: list[JobRecord] = []
        for _ in range(MAX_SELECTIONS):
            want = query.limit + len(skip)
            entries, began = await self._select(query, want, skip)
            jobs = list(dict.fromkeys(e.job_id for e in entries))
            records = dict(zip(jobs, await asyncio.gather(*(read_record(j) for j in jobs)), strict=True))
            rows, stale, listed = [], [], set()
            for entry in entries:
                record = records[entry.job_id]
                fresh = record is not None and entry.describes(record)
                if not fresh:
                    stale.append(entry)
                # a job that moved on while the page was read is listed from its record when the
                # record still belongs here (its new entry may be written after this selection)
                if (
                    record is not None
                    and entry.job_id not in listed
                    and (fresh or query.holds(record, entry))
                ):
                    rows.append(record)
                    listed.add(entry.job_id)
            skip.update(e.key for e in stale)
            await self._remove_stale(stale, began + 1)
            settled = all(e.job_id in listed or records[e.job_id] is None for e in stale)
            if settled and (len(rows) >= query.limit or len(entries) < want):
                break
        return rows[: query.limit]

    async def _remove_stale(self, stale: list[IndexEntry], below: int) -> None:
        """Remove entries found stale that were written more than STALE_GRACE_NS ago (a younger one
        may belong to a compare-and-set in flight), only messages stored below ``below`` (when the
        selection began): an entry written again since for the same job and state is kept."""
        now_ns = time.time_ns()
        for entry in stale:
            if entry.written_ns and now_ns - entry.written_ns > STALE_GRACE_NS:
                await self._purge_before(self.subject(entry.queue, entry.state, entry.job_id), below)

    async def select(
        self, query: IndexQuery, want: int, skip: set[tuple[str, str, str]] | None = None
    ) -> list[IndexEntry]:
        """The first ``want`` entries in the query's order (not yet verified against records)."""
        return (await self._select(query, want, skip))[0]

    async def _select(
        self, query: IndexQuery, want: int, skip: set[tuple[str, str, str]] | None
    ) -> tuple[list[IndexEntry], int]:
        """:meth:`select`, and the stream's last sequence when it began."""
        best = Best(query, want, skip or set())
        subject = self.filter(query.queue, query.state)
        state = (await self.js.stream_info(self.stream)).state
        if state.messages == 0:
            return [], state.last_seq
        first, last = state.first_seq, state.last_seq
        if query.oldest_first:  # no bound on what a later entry holds: every entry is read
            await self.read_all(subject, last, best.offer)
        else:
            await self._read_newest(query, subject, first, last, best)
        # a job that changed state during the read may have had its old entry removed before the
        # read got there, its new one stored past ``last``: the entries stored since are read to
        # the end (a job's newest entry is stored before its previous one is removed, so it is
        # always ahead of the read)
        for entry in await self.read_range(subject, last + 1, END):
            best.offer(entry)
        return best.entries(), last

    async def _read_newest(self, query: IndexQuery, subject: str, first: int, last: int, best: Best) -> None:
        # a filter costs the server a walk of the block's matching subjects per entry read: where
        # most entries match, reading all of them and filtering here is cheaper (~4x, measured)
        on_server = query.state is not None
        if on_server:
            # a state with at most a request's worth of entries (none running in a history of
            # finished jobs) is read whole from its first entry, in one request: windows would go
            # back to the stream's start, one round trip each, never filling the page
            held, _, start = await self.first_on(subject)
            if held == 0:
                return
            if start and held <= READ_CHUNK:
                for entry in await self.read_range(subject, start, last):
                    best.offer(entry)
                return
        high, window = last, FIRST_WINDOW
        while high >= first:
            low = max(first, high - window + 1)
            entries, low_at = await self._window(subject if on_server else None, low, high, first)
            if not on_server:
                read = entries
                entries = [
                    e for e in read if not e.arrival and (query.queue is None or e.queue == query.queue)
                ]
                # a small queue among others (a quarter of the state entries): let the server filter
                on_server = len(entries) * 4 < len(read)
            for entry in entries:
                best.offer(entry)
            # every entry stored before this window was stored before the server's time at its
            # start, and its job submitted before it was stored (give or take the clocks' skew)
            if best.full and low > first and best.floor_ns() > low_at + self.skew_ns:
                break
            high, window = low - 1, window * 3 // 2

    async def _window(
        self, subject: str | None, low: int, high: int, first: int
    ) -> tuple[list[IndexEntry], int]:
        """The entries stored from ``low`` through ``high`` (on ``subject``; None: all) and the
        server's time at ``low`` (0 at the stream's first sequence), asked together: a round trip
        a page waits for costs a turn of a loaded machine's scheduler besides the server's time."""
        # read unfiltered, the arrival entries are skipped undecoded (a filter matches none)
        entries = self.read_range(subject, low, high, arrivals=False)
        if low <= first:
            return await entries, 0
        return await asyncio.gather(entries, self.stored_at(low))
