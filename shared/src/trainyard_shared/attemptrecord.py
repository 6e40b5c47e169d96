"""How an attempt's changes move the job record: pure, shared by the executor (which decides
what to report) and the scheduler (which applies its reports, contracts/reports.py).

The fence is ``owns``: only an executor of the current attempt (rank 0's, or a member of its split
gang) changes the record. The rules of split gangs (docs/executors.md, "Split gangs"): the first
member whose ranks start moves the job to ``running``; a member whose ranks succeed records it and
the job succeeds with the last one; any other end of a member ends the attempt.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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
from trainyard_contracts.reports import ExecutorReport
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


@dataclass(frozen=True)
class AttemptEnd:
    """How an attempt, or a split gang member's ranks, ended: what its executor's end report says.
    ``kind`` is one of KIND_TO_STATE's; the outputs count only for a success."""

    kind: str
    exit_code: int | None
    reason: str
    outputs_uri: str | None = None
    outputs: StepOutputs | None = None
    outputs_digest: str | None = None

    @classmethod
    def reported(cls, report: ExecutorReport) -> AttemptEnd:
        return cls(
            report.outcome or "failed",
            report.exit_code,
            report.reason,
            report.outputs_uri,
            report.outputs,
            report.outputs_digest,
        )

    def kept(self) -> AttemptEnd:
        """This end as the record keeps it: a success with its outputs, any other end without."""
        if self.kind == "succeeded":
            return self
        return replace(self, outputs_uri=None, outputs=None, outputs_digest=None)


def conclude(record: JobRecord, end: AttemptEnd, now: datetime) -> JobRecord:
    """The record after the attempt ended. A failure with retries left is requeued with backoff;
    a timeout is final (a job that hit its limit would hit it again)."""
    if end.kind == "failed" and lifecycle.retries_left(record):
        return lifecycle.requeue(
            record, now, reason="retry", counts_as_retry=True, exit_code=end.exit_code, detail=end.reason
        )
    if record.state == JobState.SCHEDULED and end.kind != "failed":
        record = lifecycle.start(record, now)
    kept = end.kept()
    return lifecycle.finish(
        record,
        KIND_TO_STATE[end.kind],
        now,
        exit_code=kept.exit_code,
        reason=kept.reason,
        outputs_uri=kept.outputs_uri,
        outputs=kept.outputs,
        outputs_digest=kept.outputs_digest,
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


def conclude_member(record: JobRecord, executor_id: str, end: AttemptEnd, now: datetime) -> JobRecord:
    """The record after this member's ranks ended. A success waits for the other members; any
    other end is the attempt's end (with a retry if one is left, as :func:`conclude` decides)."""
    gang = record.gang
    member = member_of(record, executor_id, record.attempt)
    assert gang is not None and member is not None, "conclude_member needs a member of the attempt"
    kept = end.kept()
    gang = gang.with_member(
        executor_id,
        ended_at=now,
        state=KIND_TO_STATE[end.kind],
        exit_code=kept.exit_code,
        reason=kept.reason,
        outputs_uri=kept.outputs_uri,
        outputs=kept.outputs,
        outputs_digest=kept.outputs_digest,
    )
    placed = record.model_copy(update={"gang": gang, "updated_at": now})
    if end.kind == "succeeded":
        if any(m.state is None for m in gang.members):
            return placed  # the others still run
        master = next(m for m in gang.members if 0 in m.ranks)
        outputs = (master.outputs_uri, master.outputs, master.outputs_digest)  # rank 0's are the job's
        return conclude(placed, AttemptEnd("succeeded", 0, master.reason or end.reason, *outputs), now)
    detail = f"{executor_id} (ranks {member.ranks}): {end.reason}"
    return conclude(placed, AttemptEnd(end.kind, end.exit_code, detail), now)


def leave_member(record: JobRecord, executor_id: str, now: datetime, reason: str) -> JobRecord:
    """This member gives its ranks up (its executor shuts down or lost them): said on the record,
    so the other members stop theirs at once."""
    gang = record.gang
    if gang is None or member_of(record, executor_id, gang.attempt) is None:
        return record
    return record.model_copy(
        update={"gang": gang.with_member(executor_id, ended_at=now, state=JobState.CANCELLED, reason=reason)}
    )
