"""What an executor reports about an attempt it runs: the scheduler writes the job record from it.

An executor does not write job records (its NATS user may not): it publishes a report on its own
subject, ``<prefix>.exec-report.<executor_id>.<job_id>`` (the server's permissions let it publish
there for its own id only, so the subject proves who spoke), and the scheduler applies it to the
record by compare-and-set, fenced on that executor and attempt (docs/security.md, "Executors
report; the scheduler writes the record").
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from trainyard_contracts.records import AttemptRuntime, AttemptUsage
from trainyard_contracts.spec import DIGEST_PATTERN
from trainyard_contracts.stepoutputs import StepOutputs

ReportKind = Literal["start", "end", "handback", "cancelled", "stopped"]
EndKind = Literal["succeeded", "failed", "timed_out", "cancelled"]

REASON_MAX = 8192  # a reason is a person's sentence or an error message, clipped by the executor
URI_MAX = 4096


class ExecutorReport(BaseModel):
    """One change of one attempt, as its executor saw it.

    - ``start``: the attempt's process is about to launch here (``adopted``: found running after
      a restart, its start never recorded); scheduled -> running, or this member of a split gang
      started; ``cancelled`` instead when a cancel was asked before it ran.
    - ``end``: the attempt's process ended (``outcome``, ``exit_code``, ``reason``,
      ``outputs_uri``): terminal, or requeued for a retry as the spec's retries say; for a member
      of a split gang, its ranks' end.
    - ``handback``: the executor gives the attempt back (shutdown, or its process is gone after a
      restart): requeued with reason ``executor_lost``, not counted as a retry.
    - ``cancelled``: a cancel command came for an attempt placed here that never started.
    - ``stopped``: an attempt the scheduler ended while its process ran (``stopping``) has no
      process here any more: its room is free.
    An ``end`` or ``handback`` of an attempt that is no longer the executor's is a ``stopped``.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: ReportKind
    job_id: str = Field(min_length=1, max_length=64)
    attempt: int = Field(ge=1)
    executor_id: str = Field(min_length=1, max_length=128)
    time: datetime = Field(description="when it happened, on the executor's clock")
    outcome: EndKind | None = Field(None, description="end: how the process ended")
    exit_code: int | None = None
    reason: str = Field("", max_length=REASON_MAX)
    outputs_uri: str | None = Field(None, max_length=URI_MAX)
    outputs: StepOutputs | None = Field(
        None, description="end, succeeded: the job's outputs.json (trainyard_contracts.stepoutputs)"
    )
    outputs_digest: str | None = Field(
        None,
        pattern=DIGEST_PATTERN,
        description="end, succeeded, a pipeline step with dependents (spec pass_outputs): sha256 of "
        "its packed outputs folder in the step outputs bucket",
    )
    duration_seconds: float | None = Field(None, ge=0)
    usage: AttemptUsage | None = Field(None, description="end: what the attempt's processes used")
    runtime: AttemptRuntime | None = Field(None, description="end: the image digest and runtime-env lock")
    workdir: str | None = Field(None, max_length=URI_MAX, description="start: where the attempt runs")
    adopted: bool = False

    def msg_id(self) -> str:
        """The report's ``Nats-Msg-Id``: one per attempt, kind and executor (a re-send is dropped)."""
        return f"{self.job_id}:{self.attempt}:{self.kind}@{self.executor_id}"


def clip(text: str, limit: int = REASON_MAX) -> str:
    """``text`` cut to ``limit`` characters with a marker, for a report's free-text fields."""
    return text if len(text) <= limit else text[: limit - 16] + " ... (clipped)"


__all__ = ["EndKind", "ExecutorReport", "ReportKind", "clip"]
