"""A member of a gang split across executors: how its start and its ranks' end change the record.

Pure, like ``outcomes``: the executor loads the record, calls these, and compare-and-sets the
result. The rules (docs/executors.md, "Split gangs"):

- the first member whose ranks start moves the job to ``running`` (and only it emits JobRunning);
  every member records its own start once, so a redelivered start launches nothing twice;
- a member whose ranks succeed records it; the job succeeds when the last member does;
- a member whose ranks fail, time out or are cancelled ends the attempt at once (failed, retried,
  timed out, cancelled: as for a job on one executor); the other members see that on the record
  and stop their ranks.
"""

from __future__ import annotations

from datetime import datetime

from trainyard_contracts import JobRecord, JobState, Rendezvous, lifecycle
from trainyard_contracts.records import GangMember
from trainyard_executor.outcomes import KIND_TO_STATE, conclude

LOG_SEQ_PER_RANK = 1_000_000_000
"""A member's log chunks start at ``lowest rank * this``: the members of a gang ship to the same
subject, and their chunk ids (``job:attempt:log:seq``) must not collide in the stream's dedup."""


def member_of(record: JobRecord, executor_id: str, attempt: int) -> GangMember | None:
    """This executor's entry in the split gang of ``attempt``, if the record has one."""
    gang = record.gang
    if gang is None or gang.attempt != attempt:
        return None
    return gang.member(executor_id)


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


def start_member(record: JobRecord, executor_id: str, now: datetime) -> JobRecord | None:
    """This member's ranks are about to launch; None if it started them before (a redelivery)."""
    gang = record.gang
    member = member_of(record, executor_id, record.attempt)
    if gang is None or member is None or member.started_at is not None or member.state is not None:
        return None
    placed = record.model_copy(update={"gang": gang.with_member(executor_id, started_at=now)})
    if record.state == JobState.SCHEDULED:
        return lifecycle.start(placed, now)
    if record.state == JobState.RUNNING:
        return placed.model_copy(update={"updated_at": now})
    return None


def conclude_member(
    record: JobRecord,
    executor_id: str,
    kind: str,
    *,
    exit_code: int | None,
    reason: str,
    outputs_uri: str | None,
    now: datetime,
) -> JobRecord:
    """The record after this member's ranks ended. A success waits for the other members; any
    other end is the attempt's end (with a retry if one is left, as :func:`conclude` decides)."""
    gang = record.gang
    member = member_of(record, executor_id, record.attempt)
    assert gang is not None and member is not None, "conclude_member needs a member of the attempt"
    gang = gang.with_member(
        executor_id,
        ended_at=now,
        state=KIND_TO_STATE[kind],
        exit_code=exit_code,
        reason=reason,
        outputs_uri=outputs_uri if kind == "succeeded" else None,
    )
    placed = record.model_copy(update={"gang": gang, "updated_at": now})
    if kind == "succeeded":
        if any(m.state is None for m in gang.members):
            return placed  # the others still run
        master = next(m for m in gang.members if 0 in m.ranks)
        return conclude(
            placed,
            "succeeded",
            exit_code=0,
            reason=master.reason or reason,
            outputs_uri=master.outputs_uri,  # rank 0's outputs are the job's
            now=now,
        )
    detail = f"{executor_id} (ranks {member.ranks}): {reason}"
    return conclude(placed, kind, exit_code=exit_code, reason=detail, outputs_uri=None, now=now)


def leave_member(record: JobRecord, executor_id: str, now: datetime, reason: str) -> JobRecord:
    """This member gives its ranks up (its executor shuts down or lost them): said on the record,
    so the other members stop theirs at once."""
    gang = record.gang
    if gang is None or member_of(record, executor_id, gang.attempt) is None:
        return record
    return record.model_copy(
        update={"gang": gang.with_member(executor_id, ended_at=now, state=JobState.CANCELLED, reason=reason)}
    )


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
