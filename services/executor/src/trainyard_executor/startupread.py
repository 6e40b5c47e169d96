"""The records an executor reads at start-up to recover (core.py ``recover``), and only those.

``recover`` looks at the jobs not finished (an attempt to adopt, or one to requeue) and at finished
jobs with an attempt still stopping on this executor (its end to report). A finished job never
owns an attempt (``owns`` wants an active state), so one found on the backend with a finished or
unread record is stopped either way. Every other finished record is only peeked at, never kept: the
executor held every record of the history before (~8.5 KB each: 74 -> 284 MB at 25,000 records).

With a built jobs index the read does not even peek at the history (liveread.py): the live jobs
come from the index, and the finished ones read are those of the attempts found on the backend.
What that gives up: a finished job whose attempt was stopping here when the executor went down,
and whose process ended before it came back, keeps the ``stopping`` mark on that attempt in its
record (its end is not reported). No room is held for it: the scheduler counts room from the live
records and from the executors' heartbeats, never from a finished record's marks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from trainyard_contracts import JobRecord
from trainyard_shared.jobindex import JobIndex
from trainyard_shared.jobview import JobView, RecordPeek
from trainyard_shared.liveread import read_live

log = logging.getLogger("trainyard.executor")


def stopping_on(executor_id: str, peek: RecordPeek | JobRecord) -> bool:
    """An attempt of the job is still stopping on ``executor_id``."""
    return any(a.stopping and a.executor_id == executor_id for a in peek.attempts)


async def records_to_recover(
    kv: KeyValue, executor_id: str, index: JobIndex | None = None, on_backend: Iterable[str] = ()
) -> list[JobRecord]:
    """The jobs not finished, and the finished ones with an attempt stopping here: from the jobs
    index and the records of the jobs ``on_backend`` when ``index`` is given and built, else one
    ordered read of the whole bucket."""
    live = await read_live(kv, index) if index is not None else None
    if live is None:
        return await _read_every_record(kv, executor_id)
    records: dict[str, JobRecord] = {}
    for entry in live.entries:
        record = _parsed(entry)
        if record is not None and (not record.state.terminal or stopping_on(executor_id, record)):
            records[record.job_id] = record
    for job_id in set(on_backend) - records.keys():
        try:
            record = _parsed(await kv.get(job_id))
        except KeyNotFoundError:
            continue
        if record is not None and record.state.terminal and stopping_on(executor_id, record):
            records[job_id] = record
    return list(records.values())


def _parsed(entry: KeyValue.Entry) -> JobRecord | None:
    try:
        return JobRecord.model_validate_json(entry.value or b"")
    except ValidationError as exc:
        log.error("unreadable job record", extra={"job_id": entry.key, "error": str(exc)[:500]})
        return None


async def _read_every_record(kv: KeyValue, executor_id: str) -> list[JobRecord]:
    """One ordered read of the jobs bucket (no built index: an installation from before it)."""
    view = JobView(kv, keep_finished=0, read_finished=lambda peek: stopping_on(executor_id, peek))
    finished: dict[str, JobRecord] = {}

    def take(_before: JobRecord | None, after: JobRecord) -> None:
        if after.state.terminal and stopping_on(executor_id, after):
            finished[after.job_id] = after

    view.on_change(take)
    await view.start()
    try:
        return [*view.unfinished(), *(r for key, r in finished.items() if key not in view.live)]
    finally:
        await view.stop()
