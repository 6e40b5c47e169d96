"""Pure decisions about a job record: every state change goes through :func:`advance`.

No I/O here; services load the record, call these, then compare-and-set the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from trainyard_contracts.records import AttemptInfo, AttemptRuntime, AttemptUsage, JobRecord
from trainyard_contracts.spec import JobSpec
from trainyard_contracts.states import JobState, check_transition
from trainyard_contracts.stepoutputs import StepOutputs


def new_record(job_id: str, spec: JobSpec, now: datetime, submitted_by: str | None) -> JobRecord:
    return JobRecord(
        job_id=job_id,
        spec=spec,
        state=JobState.SUBMITTED,
        submitted_at=now,
        updated_at=now,
        submitted_by=submitted_by,
        state_times={JobState.SUBMITTED.value: now},
    )


def advance(record: JobRecord, target: JobState, now: datetime, **changes: Any) -> JobRecord:
    """The record after moving to ``target``; raises IllegalTransition if the table forbids it."""
    check_transition(record.state, target)
    times = dict(record.state_times)
    times[target.value] = now
    return record.model_copy(update={"state": target, "updated_at": now, "state_times": times, **changes})


def _with_attempt(record: JobRecord, **changes: Any) -> list[AttemptInfo]:
    attempts = list(record.attempts)
    for index, info in enumerate(attempts):
        if info.number == record.attempt:
            attempts[index] = info.model_copy(update=changes)
            return attempts
    attempts.append(AttemptInfo(number=record.attempt, **changes))
    return attempts


def schedule(record: JobRecord, executor_id: str, now: datetime, gpus: Sequence[int] = ()) -> JobRecord:
    """``gpus``: the device indices assigned on ``executor_id`` (gpu_assignment)."""
    return advance(
        record,
        JobState.SCHEDULED,
        now,
        executor_id=executor_id,
        not_before=None,
        attempts=_with_attempt(record, executor_id=executor_id, scheduled_at=now, gpus=list(gpus)),
    )


def start(record: JobRecord, now: datetime) -> JobRecord:
    return advance(record, JobState.RUNNING, now, attempts=_with_attempt(record, started_at=now))


def finish(
    record: JobRecord,
    target: JobState,
    now: datetime,
    *,
    exit_code: int | None,
    reason: str | None,
    outputs_uri: str | None = None,
    outputs: StepOutputs | None = None,
    outputs_digest: str | None = None,
) -> JobRecord:
    """End the current attempt in a terminal state."""
    return advance(
        record,
        target,
        now,
        exit_code=exit_code,
        reason=reason,
        outputs_uri=outputs_uri,
        outputs=outputs,
        outputs_digest=outputs_digest,
        attempts=_with_attempt(record, ended_at=now, state=target, exit_code=exit_code, reason=reason),
    )


def retry_backoff(spec: JobSpec, retries_used: int) -> float:
    """Exponential: backoff, 2x backoff, 4x backoff ... capped at one hour."""
    return float(min(spec.retries.backoff * (2**retries_used), 3600.0))


def requeue(
    record: JobRecord,
    now: datetime,
    *,
    reason: str,
    counts_as_retry: bool,
    exit_code: int | None = None,
    detail: str | None = None,
    stopping: bool = False,
) -> JobRecord:
    """End the current attempt and queue a new one; executor loss doesn't count as a retry.
    ``stopping``: the attempt's process may still run (the scheduler requeues it while its
    executor is told to stop it): its room stays counted until the executor says it ended."""
    not_before = (
        now + timedelta(seconds=retry_backoff(record.spec, record.retries_used)) if counts_as_retry else None
    )
    ended = _with_attempt(
        record,
        ended_at=now,
        state=JobState.REQUEUED,
        exit_code=exit_code,
        reason=detail or reason,
        stopping=stopping,
    )
    return advance(
        record,
        JobState.REQUEUED,
        now,
        attempt=record.attempt + 1,
        executor_id=None,
        not_before=not_before,
        retries_used=record.retries_used + (1 if counts_as_retry else 0),
        reason=detail or reason,
        exit_code=exit_code,
        attempts=ended,
    )


def retries_left(record: JobRecord) -> bool:
    return record.retries_used < record.spec.retries.limit


def stopped(record: JobRecord, attempt: int, executor_id: str) -> JobRecord | None:
    """The record with ``attempt``'s process known to have ended on ``executor_id`` (its
    ``stopping`` cleared); None when there is nothing to clear."""
    attempts = list(record.attempts)
    for index, info in enumerate(attempts):
        if info.number == attempt and info.stopping and info.executor_id == executor_id:
            attempts[index] = info.model_copy(update={"stopping": False})
            return record.model_copy(update={"attempts": attempts})
    return None


def ran_in(record: JobRecord, attempt: int, runtime: AttemptRuntime) -> JobRecord:
    """The record with what ``attempt`` ran in (its image digest, runtime-env lock) on its entry."""
    attempts = [
        info.model_copy(update={"runtime": runtime}) if info.number == attempt else info
        for info in record.attempts
    ]
    return record.model_copy(update={"attempts": attempts})


def used(record: JobRecord, attempt: int, usage: AttemptUsage) -> JobRecord:
    """The record with what ``attempt`` used added to its entry (each member of a split gang
    reports its own: CPU adds up, the peak is the larger)."""
    attempts = list(record.attempts)
    for index, info in enumerate(attempts):
        if info.number == attempt:
            total = usage if info.usage is None else info.usage.plus(usage)
            attempts[index] = info.model_copy(update={"usage": total})
            return record.model_copy(update={"attempts": attempts})
    return record
