"""A schedule's record (the workflow service's KV value) and the API's schedule requests.

Requests go on ``<prefix>.workflow.schedule-<verb>`` (request/reply, as pipelines do): ``create``
(schedule), ``list`` (limit), ``get``/``suspend``/``resume``/``delete`` (name) and ``backfill``
(name, start, end). Answers are a :class:`ScheduleReply`.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from trainyard_contracts._time import utcnow
from trainyard_contracts.spec import FieldError
from trainyard_contracts.workflow import ScheduleSpec

MAX_PENDING_TICKS = 200  # decided to fire, their run not yet known to exist
MAX_ACTIVE_RUNS = 200  # a schedule's runs still going, as last looked at
SCHEDULE_VERBS = ("create", "list", "get", "suspend", "resume", "delete", "backfill")


class ScheduleRecord(BaseModel):
    """One schedule: its spec, where its ticks stand, what it dropped. Every change is a
    compare-and-set on the KV revision."""

    model_config = ConfigDict(frozen=True)

    spec: ScheduleSpec
    last_tick: datetime = Field(description="ticks at or before this instant are handled (UTC)")
    pending: list[datetime] = Field(
        default_factory=list,
        max_length=MAX_PENDING_TICKS,
        description="ticks decided to fire whose run is not known to exist yet (a restart starts them "
        "under the same run id)",
    )
    active_runs: list[str] = Field(default_factory=list, max_length=MAX_ACTIVE_RUNS)
    fired: int = 0
    missed: int = Field(0, description="ticks older than the starting deadline when first looked at")
    forbidden: int = Field(0, description="ticks dropped while a run was going (concurrency: forbid)")
    replaced: int = Field(0, description="older due ticks superseded by the newest (concurrency: replace)")
    suspended_ticks: int = Field(0, description="ticks dropped while suspended")
    last_run_id: str | None = None
    created: datetime = Field(default_factory=utcnow)
    created_by: str | None = None


class ScheduleRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schedule: dict[str, object] | None = Field(None, description="create: the schedule document")
    name: str | None = Field(None, max_length=128)
    start: datetime | None = Field(None, description="backfill: the first instant (inclusive)")
    end: datetime | None = Field(None, description="backfill: the last instant (inclusive)")
    limit: int = Field(100, ge=1, le=1000)
    by: str | None = Field(None, max_length=256, description="who asks (the API's principal)")


class ScheduleReply(BaseModel):
    model_config = ConfigDict(frozen=True)

    ok: bool
    status: int = 200
    schedule: ScheduleRecord | None = None
    schedules: list[ScheduleRecord] | None = None
    run_ids: list[str] | None = Field(None, description="backfill: the runs its ticks name")
    errors: list[FieldError] = Field(default_factory=list)


__all__ = [
    "MAX_ACTIVE_RUNS",
    "MAX_PENDING_TICKS",
    "SCHEDULE_VERBS",
    "ScheduleRecord",
    "ScheduleReply",
    "ScheduleRequest",
]
