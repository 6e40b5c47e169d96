"""How an attempt's end changes the job: pure, so retries and fencing are tested without I/O."""

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


def not_started_here(record: JobRecord, member: GangMember | None) -> bool:
    """The current attempt was placed on this executor (``member``: its entry in a split gang)
    but never started here: a start makes the record (or the member) running before it spawns."""
    if member is not None:
        return member.started_at is None
    return bool(record.state == JobState.SCHEDULED)
