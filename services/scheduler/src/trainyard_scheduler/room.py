"""Which facts free an attempt's room on its executor (pure; see docs/scheduling.md, "Room").

- **The record says the attempt ended**: room is free at once, without waiting for the executor's
  next heartbeat. An executor writes an attempt's end (succeeded, failed, timed out, cancelled, or
  requeued for a retry or at its own shutdown or restart) only after the attempt's process has
  ended, so that write is the fact.
- **The scheduler ended the attempt in the record while it ran** (preempted, executor lost): the
  process may still be stopping (a preemption's grace period, to checkpoint). The attempt is marked
  ``stopping`` and holds its room, from the record, even before any heartbeat lists it, until its
  executor clears the mark (the process has ended) or ``hold_seconds`` have passed since the stop
  (the executor kills it at the end of its grace, so a mark left behind by a failed write does not
  hold room for good).
"""

from __future__ import annotations

from datetime import datetime

from trainyard_contracts import JobRecord


def attempt_ended(record: JobRecord, attempt: int, executor_id: str) -> bool:
    """The record says ``attempt``'s process on ``executor_id`` has ended."""
    gang = record.gang
    if gang is not None and gang.attempt == attempt:
        member = gang.member(executor_id)
        if member is not None:  # a split gang: each member records its own ranks' end
            return member.state is not None
    if record.attempt == attempt:
        return record.state.terminal
    info = next((i for i in record.attempts if i.number == attempt), None)
    return (
        info is not None
        and info.executor_id == executor_id
        and info.ended_at is not None
        and not info.stopping
    )


def stopping_attempts(record: JobRecord, now: datetime, hold_seconds: float) -> list[tuple[int, str]]:
    """(attempt, executor) of each earlier attempt of ``record`` that the scheduler stopped and
    whose process may still run, within ``hold_seconds`` of the stop. A gang split across
    executors is left to its members' heartbeats (the record names only rank 0's executor)."""
    out = []
    for info in record.attempts:
        if not info.stopping or info.executor_id is None or info.number == record.attempt:
            continue
        if record.gang is not None and record.gang.attempt == info.number:
            continue
        if info.ended_at is not None and (now - info.ended_at).total_seconds() > hold_seconds:
            continue
        out.append((info.number, info.executor_id))
    return out


def frees_room(before: JobRecord | None, after: JobRecord) -> bool:
    """A write that cleared an attempt's ``stopping`` mark: its room is free now."""
    if before is None:
        return False
    was = sum(1 for i in before.attempts if i.stopping)
    return was > 0 and sum(1 for i in after.attempts if i.stopping) < was
