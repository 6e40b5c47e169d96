"""A start-up read of the jobs not finished, from the jobs index, so that a restart costs the live
jobs and not the history (issue 23; docs/performance.md, "Start-up reads").

The jobs bucket holds every job the installation ever ran. A watch of the whole bucket (what
:class:`~trainyard_shared.jobview.JobView` did at each start) hands every record over one by one:
~70 s for the scheduler, the executor and telemetry together at 100,000 records. The jobs index
(jobindex.py) already says which jobs are in which state, and it has an entry for every record's
current state (its invariant). So a start reads:

1. the bucket's last sequence, ``S``;
2. the index entries of the states that are not terminal (one filtered read per state);
3. the record of each job named there, by key (an entry whose record says a finished state is a
   stale one: the caller's filters drop it as any finished record);
4. then the bucket from ``S + 1`` on (:meth:`KvWatch.start_after`).

No live job is missed: one live at ``S`` that is still in that state at step 2 has its entry then
(the entry is written before the record, and removed only after the job left the state), and one
that moved after ``S`` has a revision above ``S``, which step 4 hands over. Revisions order the
rest: a record read at step 3 may be newer than ``S``; the tail's older copy of it is ignored.

When the index is not built (an installation from before it, or an index that lost its oldest
messages: the built marker is stored first, so it goes first), :func:`read_live` answers None and
the caller reads the whole bucket as before.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from trainyard_contracts import JobState
from trainyard_shared.jobindex import END, IndexEntry, JobIndex

LIVE_STATES = tuple(state for state in JobState if not state.terminal)
GETS_IN_FLIGHT = 64  # record reads by key at once


@dataclass(frozen=True)
class LiveRead:
    """The live jobs' records as stored (with their revisions), and the bucket's last sequence
    before the index was read: a watch goes on from the one after it."""

    entries: list[KeyValue.Entry]
    last_seq: int


async def live_job_ids(index: JobIndex) -> set[str]:
    """The jobs the index has in a state that is not terminal (stale entries included)."""
    ids: set[str] = set()

    def take(entry: IndexEntry) -> None:
        if not entry.arrival:
            ids.add(entry.job_id)

    for state in LIVE_STATES:
        await index.read_all(index.filter(None, state.value), END, take)
    return ids


async def read_live(kv: KeyValue, index: JobIndex) -> LiveRead | None:
    """The records of the jobs not finished and where the bucket stood (None: no built index)."""
    if not await index.built():
        return None
    status = await kv.status()
    last_seq = status.stream_info.state.last_seq
    ids = sorted(await live_job_ids(index))
    room = asyncio.Semaphore(GETS_IN_FLIGHT)

    async def get(job_id: str) -> KeyValue.Entry | None:
        async with room:
            try:
                return await kv.get(job_id)
            except KeyNotFoundError:  # purged, or an entry of a write that never happened
                return None

    found = await asyncio.gather(*(get(job_id) for job_id in ids))
    return LiveRead([entry for entry in found if entry is not None], last_seq)
