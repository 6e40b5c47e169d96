"""How an attempt's changes move the job record: pure, shared by the executor (which decides
what to report) and the scheduler (which applies its reports, contracts/reports.py).

The fence is ``owns``: only an executor of the current attempt (rank 0's, or a member of its split
gang) changes the record. The rules of split gangs (docs/executors.md, "Split gangs"): the first
member whose ranks start moves the job to ``running``; a member whose ranks succeed records it and
the job succeeds with the last one; any other end of a member ends the attempt.
"""

from __future__ import annotations

from datetime import datetime

from trainyard_contracts import (
    Envelope,
    JobCancelled,
    JobFailed,
    JobRecord,
    JobRequeued,
    JobState,
    JobSucceeded,
    JobTimedOut,
    lifecycle,
)
from trainyard_contracts.records import GangMember
from trainyard_contracts.stepoutputs import StepOutputs

KIND_TO_STATE = {
    "succeeded": JobState.SUCCEEDED,
    "failed": JobState.FAILED,
    "timed_out": JobState.TIMED_OUT,
    "cancelled": JobState.CANCELLED,
}


def owns(record: JobRecord, executor_id: str, attempt: int) -> bool:
    """The fence: only an executor of the current attempt (rank 0's, or a member of its split gang)
    may change the record."""
    return bool(record.attempt == attempt and record.state.active and record.runs_on(executor_id))


def conclude(
    record: JobRecord,
    kind: str,
    *,
    exit_code: int | None,
    reason: str,
    outputs_uri: str | None,
    now: datetime,
    outputs: StepOutputs | None = None,
    outputs_digest: str | None = None,
) -> JobRecord:
    """The record after the attempt ended. A failure with retries left is requeued with backoff;
    a timeout is final (a job that hit its limit would hit it again)."""
    if kind == "failed" and lifecycle.retries_left(record):
        return lifecycle.requeue(
            record, now, reason="retry", counts_as_retry=True, exit_code=exit_code, detail=reason
        )
    if record.state == JobState.SCHEDULED and kind != "failed":
        record = lifecycle.start(record, now)
    return lifecycle.finish(
        record,
        KIND_TO_STATE[kind],
        now,
        exit_code=exit_code,
        reason=reason,
        outputs_uri=outputs_uri if kind == "succeeded" else None,
        outputs=outputs if kind == "succeeded" else None,
        outputs_digest=outputs_digest if kind == "succeeded" else None,
    )


def event_for(before: JobRecord, after: JobRecord, duration: float | None) -> Envelope:
    attempt = before.attempt
    common = {"job_id": after.job_id, "attempt": attempt}
    executor_id = before.executor_id
    match after.state:
        case JobState.SUCCEEDED:
            return JobSucceeded(
                **common,
                executor_id=executor_id,
                exit_code=after.exit_code or 0,
                outputs_uri=after.outputs_uri,
                outputs=after.outputs,
                outputs_digest=after.outputs_digest,
                duration_seconds=duration,
                declares_model=bool(after.spec.outputs and after.spec.outputs.model),
            )
        case JobState.FAILED:
            return JobFailed(
                **common,
                executor_id=executor_id,
                exit_code=after.exit_code,
                reason=after.reason or "failed",
                duration_seconds=duration,
            )
        case JobState.TIMED_OUT:
            return JobTimedOut(
                **common,
                executor_id=executor_id,
                reason=after.reason or "timed out",
                duration_seconds=duration,
            )
        case JobState.CANCELLED:
            return JobCancelled(**common, reason=after.reason or "cancelled")
        case JobState.REQUEUED:
            return JobRequeued(
                **common,
                reason="retry",
                next_attempt=after.attempt,
                not_before=after.not_before,
                detail=after.reason,
            )
    raise ValueError(f"no event for an attempt that ended in {after.state}")


def member_of(record: JobRecord, executor_id: str, attempt: int) -> GangMember | None:
    """This executor's entry in the split gang of ``attempt``, if the record has one."""
    gang = record.gang
    if gang is None or gang.attempt != attempt:
        return None
    return gang.member(executor_id)


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
    outputs: StepOutputs | None = None,
    outputs_digest: str | None = None,
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
        outputs=outputs if kind == "succeeded" else None,
        outputs_digest=outputs_digest if kind == "succeeded" else None,
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
            outputs=master.outputs,
            outputs_digest=master.outputs_digest,
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
