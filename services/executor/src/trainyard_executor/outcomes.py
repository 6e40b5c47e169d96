"""How an attempt's end changes the job: the pure rules live in trainyard_shared.attemptrecord
(the scheduler applies them to executors' reports); this executor's own decisions are here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from trainyard_contracts import JobRecord, JobState
from trainyard_contracts.records import GangMember
from trainyard_shared.attemptrecord import KIND_TO_STATE, AttemptEnd, conclude, event_for, member_of, owns

__all__ = [
    "KIND_TO_STATE",
    "AttemptEnd",
    "StartVerdict",
    "conclude",
    "event_for",
    "not_started_here",
    "owns",
    "start_verdict",
]

# what the record says of a start this executor reported: run it; it was cancelled before it ran;
# it is not this executor's (any more)
StartVerdict = tuple[Literal["run", "cancelled", "gone"], JobRecord | None]


def start_verdict(
    executor_id: str, attempt: int, *, adopted: bool = False
) -> Callable[[JobRecord | None], StartVerdict | None]:
    """Reads the record after a start report: None while the scheduler has not applied it."""

    def decide(record: JobRecord | None) -> StartVerdict | None:
        if record is None:
            return ("gone", None)
        if owns(record, executor_id, attempt):
            member = member_of(record, executor_id, attempt) if record.gang is not None else None
            if member is None or adopted:
                return ("run", record) if record.state == JobState.RUNNING else None
            if member.started_at is not None:
                return ("run", record)
            return None if member.state is None else ("gone", record)
        if record.attempt == attempt and record.state == JobState.CANCELLED and record.runs_on(executor_id):
            return ("cancelled", record)
        return ("gone", record)

    return decide


def not_started_here(record: JobRecord, member: GangMember | None) -> bool:
    """The current attempt was placed on this executor (``member``: its entry in a split gang)
    but never started here: a start makes the record (or the member) running before it spawns."""
    if member is not None:
        return member.started_at is None
    return bool(record.state == JobState.SCHEDULED)
