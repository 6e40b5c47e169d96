"""A member of a gang split across executors: how its start and its ranks' end change the record.

Pure. How a member's start and end change the record is in ``trainyard_shared.attemptrecord``
(the scheduler applies a member's reports with it); here, what a member reads from the record.
The rules (docs/executors.md, "Split gangs"):

- the first member whose ranks start moves the job to ``running`` (and only it emits JobRunning);
  every member records its own start once, so a redelivered start launches nothing twice;
- a member whose ranks succeed records it; the job succeeds when the last member does;
- a member whose ranks fail, time out or are cancelled ends the attempt at once (failed, retried,
  timed out, cancelled: as for a job on one executor); the other members see that on the record
  and stop their ranks.
"""

from __future__ import annotations

from trainyard_contracts import JobRecord, JobState, Rendezvous
from trainyard_shared.attemptrecord import conclude_member, leave_member, member_of, start_member

__all__ = [
    "LOG_SEQ_PER_RANK",
    "conclude_member",
    "ended_by_a_member",
    "leave_member",
    "log_seq_base",
    "member_of",
    "rendezvous_of",
    "start_member",
]

LOG_SEQ_PER_RANK = 1_000_000_000
"""A member's log chunks start at ``lowest rank * this``: the members of a gang ship to the same
subject, and their chunk ids (``job:attempt:log:seq``) must not collide in the stream's dedup."""


def rendezvous_of(record: JobRecord, executor_id: str, attempt: int) -> Rendezvous | None:
    """The rendezvous the scheduler chose for this member (the record is the truth; the start
    command carries the same)."""
    gang = record.gang
    member = member_of(record, executor_id, attempt)
    if gang is None or member is None:
        return None
    return Rendezvous(
        master_addr=gang.master_addr,
        master_port=gang.master_port,
        world_size=gang.world_size,
        ranks=member.ranks,
    )


def log_seq_base(record: JobRecord, executor_id: str, attempt: int) -> int:
    member = member_of(record, executor_id, attempt)
    return min(member.ranks) * LOG_SEQ_PER_RANK if member is not None else 0


def ended_by_a_member(record: JobRecord, attempt: int, executor_id: str) -> bool:
    """Must this member stop its ranks now? Yes when a member ended the attempt (the job is
    terminal, or another member's ranks failed, timed out or were given up), or when the attempt
    is long gone (a newer one already placed). No when the scheduler requeued it (preempted,
    executor lost): its cancel command follows and brings its own grace period."""
    if record.attempt == attempt:
        return not record.state.active
    gang = record.gang
    if gang is not None and gang.attempt == attempt:
        return any(
            m.state not in (None, JobState.SUCCEEDED) for m in gang.members if m.executor_id != executor_id
        )
    return True  # a newer attempt is placed already: nothing of this one is worth keeping
