"""Oldest first without reading every entry: a walk of the jobs index's arrival entries
(docs/performance.md, "The jobs index").

A state's entry is written when the job enters the state, which may be long after it was
submitted, so no position in the stream bounds the submission times stored after it: an
oldest-first page used to read every entry of its filter. An **arrival entry**
(``JobIndex.arrive``: ``<p>.jobidx.<queue>.<job>``, written once, with the record's creation) is
*on time* when it was stored within ``ARRIVAL_LATE_NS`` (2 s) of its submission stamp: its
acknowledgement came within that (by the writer's clock; give or take the clocks' skew,
``JobIndex.skew_ns``), or else the server's own stamp on it says so (one direct get, when the
writer was slow to hear back). Any other is also written *late*, under
``<p>.jobidx.late.<queue>.<job>.arrival``. So every on-time entry stored after the server's time
``T`` holds a submission after ``T - ARRIVAL_LATE_NS - skew``, and a walk from the start of the
stream can hand out, in order, every entry ranked below that bound: nothing read later can rank
before it. The late ones (none, unless records were created with an old submission time: a
rebuild of the index, a test's seeding, a submission slower than 2 s) are read in full first. The
cost of a page is therefore the arrival entries up to its last row and 2 s of arrivals past it.

An arrival entry says nothing of the job's state now: each entry handed out is checked against
its record (read by key, as every row of a page is), and a page with a state filter keeps the
records in that state. Where that state is a small part of the jobs (a few thousand entries,
counted by the server first), reading its entries is cheaper and is what is done; a walk that
checked ``MAX_CHECKED`` records without filling the page gives way to it too.
"""

from __future__ import annotations

import asyncio
import heapq
from typing import TYPE_CHECKING

from trainyard_contracts import JobRecord

if TYPE_CHECKING:
    from trainyard_shared.jobindex import IndexEntry, IndexQuery, JobIndex, RecordReader

STATE_READ_AT_MOST = 5000  # a state filter with fewer entries reads them all (one ordered read)
MAX_CHECKED = 2000  # records a state-filtered walk checks before it reads the state's entries
FIRST_WINDOW = 1024  # stream sequences the walk reads first (then half as many more each time)


async def oldest_page(
    index: JobIndex, query: IndexQuery, read_record: RecordReader
) -> list[JobRecord] | None:
    """The first ``query.limit`` records oldest first, or None where a read of every entry of the
    query's filter is the better way (arrival entries not built yet, a small state)."""
    from trainyard_shared.jobindex import ARRIVAL_LATE_NS, to_ns

    if not await index.arrivals_built():
        return None
    if query.state is not None and (await index.count(query.queue, query.state))[0] <= STATE_READ_AT_MOST:
        return None
    info = (await index.js.stream_info(index.stream)).state
    first, last = info.first_seq, info.last_seq
    waiting: list[tuple[tuple[int, str], str, IndexEntry]] = []  # a heap, oldest first
    offered: set[str] = set()  # a job once (read twice by overlapping reads, or on time and late)

    def offer(entry: IndexEntry) -> None:
        if (
            entry.arrival
            and entry.job_id not in offered
            and (query.queue is None or entry.queue == query.queue)
            and query.matches(entry)
        ):
            offered.add(entry.job_id)
            heapq.heappush(waiting, (entry.rank, entry.job_id, entry))

    await index.read_all(index.arrivals_filter(query.queue, late=True), last, offer)
    rows: list[JobRecord] = []
    listed: set[str] = set()
    checked = 0
    low, window, on_server = first, FIRST_WINDOW, False
    while len(rows) < query.limit:
        bound: int | None = None  # every entry is read: all of them may be handed out
        if low <= last:
            high = min(last, low + window - 1)
            if on_server:
                entries = await index.read_range(index.arrivals_filter(query.queue), low, high)
            else:
                entries = await read_spans(index, low, high)
                # a small queue among others: let the server filter (as a newest-first read does)
                on_server = query.queue is not None and sum(
                    e.queue == query.queue for e in entries
                ) * 4 < len(entries)
            for entry in entries:
                offer(entry)
            low, window = high + 1, window * 3 // 2
            if low <= last:
                bound = await index.stored_at(low) - ARRIVAL_LATE_NS - index.skew_ns
        while waiting and len(rows) < query.limit and (bound is None or waiting[0][0][0] < bound):
            handed: list[IndexEntry] = []
            while (
                waiting
                and len(handed) < query.limit - len(rows)
                and (bound is None or waiting[0][0][0] < bound)
            ):
                handed.append(heapq.heappop(waiting)[2])
            records = await asyncio.gather(*(read_record(e.job_id) for e in handed))
            checked += len(handed)
            for entry, record in zip(handed, records, strict=True):
                if (
                    record is None
                    or record.job_id in listed
                    or to_ns(record.submitted_at) != entry.submitted_ns
                ):
                    continue  # gone (purged), or read twice
                if (query.queue is None or record.spec.queue == query.queue) and (
                    query.state is None or record.state.value == query.state
                ):
                    rows.append(record)
                    listed.add(record.job_id)
        if low > last and not waiting:
            break
        if query.state is not None and checked > MAX_CHECKED and len(rows) < query.limit:
            return None  # a rare state among the oldest jobs: its own entries are fewer to read
    return rows[: query.limit]


async def read_spans(index: JobIndex, low: int, high: int) -> list[IndexEntry]:
    """Every entry stored from ``low`` through ``high`` (and maybe a few after), without a filter,
    in spans of READ_CHUNK asked at once: the spans are known without a filter (one message a
    sequence, a removed one's place skipped), so they need not wait for each other."""
    from trainyard_shared.jobindex import READ_CHUNK

    spans = range(low, high + 1, READ_CHUNK)
    parts = await asyncio.gather(*(index.read_range(None, a, min(high, a + READ_CHUNK - 1)) for a in spans))
    return [entry for part in parts for entry in part]
