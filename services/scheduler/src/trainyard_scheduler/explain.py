"""Turning a plan into answers a person can act on: why a job waits, and where it stands.

Pure: from the pending jobs and the policy's reasons to :class:`WaitReason` values. The policy's
reason is a sentence; its kind is read from the policy's structured detail when it gives one, else
from the sentence's wording.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, get_args

from trainyard_contracts import WaitReason
from trainyard_contracts.scheduling import WaitKind

KINDS = frozenset(get_args(WaitKind))

_KIND_BY_WORDING = (
    ("backoff", "backoff"),
    ("no executor is online", "no_executor"),
    ("quota", "quota"),
    ("gang", "gang"),
    ("reserv", "reserved"),
    ("room", "capacity"),
    ("fit", "capacity"),
)


def kind_of(message: str) -> str:
    lowered = message.lower()
    for words, kind in _KIND_BY_WORDING:
        if words in lowered:
            return kind
    return "other"


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """What ordering within a queue needs to know of a pending job."""

    job_id: str
    queue: str
    priority: int
    submitted_at: float


def positions(pending: Iterable[QueuedJob]) -> dict[str, tuple[int, int]]:
    """job -> (position in its queue, 1-based; the queue's length). Order: priority, then age."""
    by_queue: dict[str, list[QueuedJob]] = defaultdict(list)
    for job in pending:
        by_queue[job.queue].append(job)
    out: dict[str, tuple[int, int]] = {}
    for jobs in by_queue.values():
        jobs.sort(key=lambda j: (-j.priority, j.submitted_at, j.job_id))
        for i, job in enumerate(jobs, start=1):
            out[job.job_id] = (i, len(jobs))
    return out


class WaitingEntry(Protocol):
    """What every policy ``waiting`` entry has; ``kind``, ``detail`` and ``estimated_start`` are
    read when an entry has them."""

    @property
    def job_id(self) -> str: ...

    @property
    def reason(self) -> str: ...


def wait_reasons(
    waiting: Iterable[WaitingEntry],
    pending: Iterable[QueuedJob],
) -> dict[str, WaitReason]:
    """The policy's ``waiting`` entries (``job_id``, ``reason`` and, when the policy gives them,
    ``kind`` and ``estimated_start`` as a POSIX time) with each job's position in its queue."""
    where = positions(pending)
    out: dict[str, WaitReason] = {}
    for entry in waiting:
        job_id, message = entry.job_id, entry.reason
        detail = getattr(entry, "detail", None)
        kind = getattr(detail, "kind", None) or getattr(entry, "kind", None) or kind_of(message)
        start = getattr(detail, "estimated_start", None) or getattr(entry, "estimated_start", None)
        position, length = where.get(job_id, (None, None))
        position = getattr(entry, "position", None) or position
        out[job_id] = WaitReason(
            kind=kind if kind in KINDS else "other",
            message=message,
            position=position,
            queue_length=length,
            estimated_start=datetime.fromtimestamp(start, UTC) if isinstance(start, int | float) else None,
        )
    return out


def count_by_kind(reasons: Mapping[str, WaitReason]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for reason in reasons.values():
        counts[reason.kind] += 1
    return dict(counts)
