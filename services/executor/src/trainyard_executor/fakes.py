"""An in-memory log shipper for the executor core's unit tests; the bus's own fakes (the job
store's bucket, the publisher, the executor directory) are ``trainyard_shared.testing.fakes``.
The real-server tests (``service`` marker) stay the guard for the wire itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


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
