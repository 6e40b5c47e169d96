"""The jobs table's new rows, live: while the first page (newest first) is open, a job that
enters the page's filters with a rank above the page's top row is added above it, and the rows
added follow their jobs' state changes, over server-sent events (docs/ui.md, "Live rows").

The source is the jobs index, not the records: one ordered consumer per open page on the index
entries of the page's queue (every state: an added job's later moves are entries too), from the
stream sequence the page was read at, so no job submitted between the page's read and the
stream's start is missed. Each event is every added row, newest first (swapped whole): a stream
that reconnects replays from the same sequence and draws the same rows, never a row twice.

Bounded: at most ``MAX_NEW_ROWS`` rows are added per page (then a row says there are more and to
reload), a burst of entries is one event (at most one every ``EVERY_SECONDS``), and only the first
page streams (a later page is a page of keyset paging: its rows do not move).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import anyio
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from trainyard_contracts import JobRecord
from trainyard_shared.jobindex import IndexEntry, IndexQuery, JobIndex, to_ns

log = logging.getLogger("trainyard.ui.live")

MAX_NEW_ROWS = 50
EVERY_SECONDS = 0.5
MAX_TRIES = 10  # reads of a record behind its entry (every EVERY_SECONDS) before it is let be


@dataclass
class NewRows:
    """Which jobs the page has had added, and which entries call for a record read (pure).

    ``query``: the page's filters (queue, state, name, labels); ``top``: the rank of the page's
    first row (None: the page was empty), only jobs ranked above it are new."""

    query: IndexQuery
    top: tuple[int, str] | None
    added: dict[str, JobRecord] = field(default_factory=dict)
    # jobs whose records are to be read: new candidates and added jobs that moved, each with its
    # newest entry and how many reads found the record behind it
    to_read: dict[str, tuple[IndexEntry, int]] = field(default_factory=dict)
    more: bool = False  # jobs beyond the cap were left out: the page says to reload

    def offer(self, entry: IndexEntry) -> bool:
        """Note an index entry; whether a record is to be read for it."""
        if entry.job_id in self.added:
            self.to_read[entry.job_id] = (entry, 0)  # an added job moved: its row is drawn again
            return True
        if self.top is not None and entry.rank <= self.top:
            return False  # on this page or a later one: the page's rows do not move
        if self.query.state is not None and entry.state != self.query.state:
            return False
        if not self.query.matches(entry):  # name and labels, from the entry
            return False
        if entry.job_id not in self.to_read and len(self.added) + len(self.to_read) >= MAX_NEW_ROWS:
            self.more = True
            return False
        self.to_read[entry.job_id] = (entry, 0)
        return True

    def take(self) -> list[str]:
        return sorted(self.to_read)

    def read(self, job_id: str, record: JobRecord | None) -> None:
        """A record read for an offered entry (None: gone, or not this viewer's). An entry is
        written before its record: a record not there yet, or behind its entry, is read again
        (at most ``MAX_TRIES`` times; a stale entry's never catches up). A new job is added when
        its record is in the page's filters; an added job's row is kept whatever its state now,
        as the page's own rows are."""
        entry, tries = self.to_read.pop(job_id)
        if record is None or not entry.describes(record):
            if tries + 1 < MAX_TRIES:
                self.to_read.setdefault(job_id, (entry, tries + 1))
            if record is None:
                return
        if job_id in self.added or self.passes(record):
            self.added[job_id] = record

    def passes(self, record: JobRecord) -> bool:
        query = self.query
        rank = (to_ns(record.submitted_at), record.job_id)
        return (
            (self.top is None or rank > self.top)
            and (query.queue is None or record.spec.queue == query.queue)
            and (query.state is None or record.state.value == query.state)
            and (query.name is None or record.spec.name == query.name)
            and all(record.spec.labels.get(k) == v for k, v in query.labels.items())
        )

    def rows(self) -> list[JobRecord]:
        return sorted(self.added.values(), key=lambda r: (to_ns(r.submitted_at), r.job_id), reverse=True)


async def new_rows(
    index: JobIndex,
    rows: NewRows,
    from_seq: int | None,
    read: Callable[[str], Awaitable[JobRecord | None]],
) -> AsyncIterator[list[JobRecord]]:
    """The added rows each time they change, from the index entries stored after ``from_seq``
    (None: from now). Ends when the caller stops iterating (the page closed)."""
    woken = asyncio.Event()

    async def on_entry(msg: Msg) -> None:
        if not msg.data:
            return  # a marker
        try:
            entry = IndexEntry.decode(msg.data)
        except (KeyError, ValueError):
            return
        if rows.offer(entry):
            woken.set()

    start = (
        ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=from_seq + 1)
        if from_seq is not None
        else ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
    )
    sub = await index.js.subscribe(
        index.filter(rows.query.queue, None),
        stream=index.stream,
        cb=on_entry,
        ordered_consumer=True,
        config=start,
        inactive_threshold=30.0,  # the server removes it this long after a page that vanished
    )
    try:
        while True:
            await woken.wait()
            woken.clear()
            wanted = rows.take()
            for job_id, record in zip(wanted, await asyncio.gather(*map(read, wanted)), strict=True):
                rows.read(job_id, record)
            yield rows.rows()
            await asyncio.sleep(EVERY_SECONDS)  # a burst of entries is one event
            if rows.to_read:  # records that were behind their entries: read again
                woken.set()
    finally:
        # the page closed: this runs in a cancelled scope, so shielded (bounded), or the consumer
        # would stay subscribed here until the connection ends
        with anyio.move_on_after(5, shield=True), contextlib.suppress(Exception):
            await sub.unsubscribe()
