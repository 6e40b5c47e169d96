"""An in-memory log shipper and a reporter applied at once, for the executor core's tests; the
bus's own fakes (the job store's bucket, the publisher, the executor directory) are
``trainyard_shared.testing.fakes``.
The real-server tests (``service`` marker) stay the guard for the wire itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import nats.errors

from trainyard_contracts.reports import ExecutorReport
from trainyard_executor.reporting import Decide
from trainyard_shared.jobstore import JobStore
from trainyard_shared.publishing import EventPublisher
from trainyard_shared.reports import ReportApplier

T = TypeVar("T")


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


class AppliedAtOnce:
    """A reporter whose reports the scheduler's own rule applies at once
    (``trainyard_shared.reports.ReportApplier``) to the store the test reads, announcing on the
    test's publisher: the executor's decisions without a scheduler process. ``sent``: every report."""

    def __init__(self, store: JobStore, events: EventPublisher) -> None:
        self.store = store
        self.applier = ReportApplier(store, events)
        self.sent: list[ExecutorReport] = []

    async def send(self, report: ExecutorReport) -> None:
        self.sent.append(report)
        await self.applier.apply(report)

    async def settle(self, job_id: str, decide: Decide[T], timeout: float) -> T:
        found = await self.store.get(job_id)
        verdict = decide(found[0] if found is not None else None)
        if verdict is None:
            raise nats.errors.TimeoutError
        return verdict
