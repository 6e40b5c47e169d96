"""The records an executor reads at start-up to recover (core.py ``recover``), and only those.

``recover`` looks at the jobs not finished (an attempt to adopt, or one to requeue) and at finished
jobs with an attempt still stopping on this executor (its end to report). A finished job never
owns an attempt (``owns`` wants an active state), so one found on the backend with a finished or
unread record is stopped either way. Every other finished record is only peeked at, never kept: the
executor held every record of the history before (~8.5 KB each: 74 -> 284 MB at 25,000 records).
"""

from __future__ import annotations

from nats.js.kv import KeyValue

from trainyard_contracts import JobRecord
from trainyard_shared.jobview import JobView, RecordPeek


def stopping_on(executor_id: str, peek: RecordPeek | JobRecord) -> bool:
    """An attempt of the job is still stopping on ``executor_id``."""
    return any(a.stopping and a.executor_id == executor_id for a in peek.attempts)


async def records_to_recover(kv: KeyValue, executor_id: str) -> list[JobRecord]:
    """One ordered read of the jobs bucket: the jobs not finished, and the finished ones with an
    attempt stopping here."""
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
