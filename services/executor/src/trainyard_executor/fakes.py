"""In-memory stand-ins for the executor core's collaborators, so its decisions get fast unit tests.

The core's own compare-and-set functions run on the stored record exactly as against NATS; what
the fakes leave out is the wire: a revision is a counter, an event or a log line is kept in a
list. The real-server tests (``service`` marker) stay the guard for the wire itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainyard_contracts import Envelope, ExecutorHeartbeat, JobRecord


class InMemoryJobStore:
    """The job records by id, each with its revision; ``update`` is a compare-and-set that cannot
    lose (nothing else writes), ``change`` saying no (None) leaves the record as it is."""

    def __init__(self, *records: JobRecord) -> None:
        self.records: dict[str, tuple[JobRecord, int]] = {r.job_id: (r, 1) for r in records}
        self.writes = 0

    def record(self, job_id: str) -> JobRecord:
        return self.records[job_id][0]

    def remember(self, record: JobRecord, revision: int) -> None:
        return None  # nothing to cache: every read is of the one copy

    async def get(self, job_id: str) -> tuple[JobRecord, int] | None:
        return self.records.get(job_id)

    async def update(
        self, job_id: str, change: Callable[[JobRecord], JobRecord | None], *, tries: int = 20
    ) -> tuple[JobRecord, JobRecord] | None:
        current = self.records.get(job_id)
        if current is None:
            return None
        before, revision = current
        after = change(before)
        if after is None:
            return None
        self.records[job_id] = (after, revision + 1)
        self.writes += 1
        return before, after


class RecordingPublisher:
    """The events the core announced, in order."""

    def __init__(self) -> None:
        self.events: list[Envelope] = []

    async def emit(self, event: Envelope, **headers: str) -> None:
        self.events.append(event)

    def types(self) -> list[str]:
        return [str(getattr(event, "type", type(event).__name__)) for event in self.events]


class InMemoryDirectory:
    """The executors' leases: the last heartbeat of each, and who said goodbye."""

    def __init__(self) -> None:
        self.beats: dict[str, ExecutorHeartbeat] = {}
        self.removed: list[str] = []

    async def put(self, heartbeat: ExecutorHeartbeat) -> None:
        self.beats[heartbeat.executor_id] = heartbeat

    async def remove(self, executor_id: str) -> None:
        self.beats.pop(executor_id, None)
        self.removed.append(executor_id)


class RecordingShipper:
    """An attempt's log shipper that keeps its lines: (stream, text), the system's as "system"."""

    def __init__(self, job_id: str, attempt: int) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.seq = 0
        self.lines: list[tuple[str, str]] = []
        self.closed = False

    async def line(self, stream: str, text: str) -> None:
        self.lines.append((stream, text))

    async def system(self, text: str) -> None:
        self.lines.append(("system", text))

    async def close(self) -> None:
        self.closed = True

    async def flush(self) -> None:
        return None


def shippers() -> tuple[dict[tuple[str, int], RecordingShipper], Callable[[str, int], Any]]:
    """A shipper factory for the core, and the shippers it made by (job, attempt)."""
    made: dict[tuple[str, int], RecordingShipper] = {}

    def make(job_id: str, attempt: int) -> RecordingShipper:
        made[(job_id, attempt)] = RecordingShipper(job_id, attempt)
        return made[(job_id, attempt)]

    return made, make
