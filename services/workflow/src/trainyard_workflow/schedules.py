"""Schedules: create, suspend, resume, delete, backfill, and the ticker's pass that fires ticks.

Each tick fires exactly once, across restarts and replicas:
- the pass that decides a tick fires stores it in the schedule's ``pending`` list, together with
  the new ``last_tick``, in one compare-and-set: two passes racing on the same ticks cannot both
  take them (the loser reads again and finds nothing due);
- the run is created under ``tick_run_id(schedule, tick)`` with a KV create, which fails if the
  run exists: a tick pending after a crash (stored, its run maybe created) is started again under
  the same id and is the same run;
- then the tick leaves ``pending`` (compare-and-set again).
Only the replica holding the ``workflow-schedules`` lease runs passes (app.py); the steps above
keep a paused old leader from doubling a tick all the same.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from trainyard_contracts import FieldError, SpecError
from trainyard_contracts._time import utcnow
from trainyard_contracts.runs import PipelineRun, RunState
from trainyard_contracts.schedules import ScheduleRecord
from trainyard_contracts.spec import field_errors
from trainyard_contracts.workflow import PipelineSpec, ScheduleSpec, validate_pipeline
from trainyard_workflow.schedule_core import (
    CronError,
    backfill_ticks,
    check_cron,
    record_backfill,
    record_pass,
    record_started,
    record_suspended,
    tick_run_id,
)
from trainyard_workflow.schedule_store import ScheduleNotFound, ScheduleStore
from trainyard_workflow.store import RunStore

log = logging.getLogger("trainyard.workflow.schedules")

StartRun = Callable[[str, PipelineSpec, str], Awaitable[PipelineRun]]
CancelRun = Callable[[str, str], Awaitable[Any]]


def validate_schedule(document: Any) -> ScheduleSpec:
    """A schedule document: its pipeline with the schedule's params substituted, its cron read by
    cronsim; SpecError names every bad field (``pipeline.steps.0.job.command``, ``cron``)."""
    if not isinstance(document, dict):
        raise SpecError([FieldError(field="(document)", message="expected a mapping of schedule fields")])
    params = document.get("params") or {}
    if not isinstance(params, dict):
        raise SpecError([FieldError(field="params", message="expected a mapping of name: value")])
    try:
        pipeline = validate_pipeline(document.get("pipeline"), params)
    except SpecError as exc:
        raise SpecError(
            [FieldError(field=f"pipeline.{e.field}", message=e.message) for e in exc.errors]
        ) from None
    try:
        spec = ScheduleSpec.model_validate({**document, "pipeline": pipeline})
    except ValidationError as exc:
        raise SpecError(field_errors(exc)) from None
    try:
        check_cron(spec.cron)
    except CronError as exc:
        raise SpecError([FieldError(field="cron", message=str(exc))]) from None
    return spec


class ScheduleService:
    def __init__(
        self,
        schedules: ScheduleStore,
        runs: RunStore,
        start_run: StartRun,
        cancel_run: CancelRun,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.schedules, self.runs = schedules, runs
        self.start_run, self.cancel_run, self.clock = start_run, cancel_run, clock

    async def create(self, document: Any, by: str | None = None) -> ScheduleRecord:
        """A new schedule; its first tick is the first one after now (nothing fires retroactively)."""
        spec = validate_schedule(document)
        record = ScheduleRecord(spec=spec, last_tick=self.clock(), created_by=by)
        await self.schedules.create(record)
        return record

    @property
    def store(self) -> Any:
        return self.schedules

    async def get(self, name: str) -> ScheduleRecord:
        found = await self.schedules.get(name)
        if found is None:
            raise ScheduleNotFound(name)
        return found[0]

    async def suspend(self, name: str, suspended: bool) -> ScheduleRecord:
        change = functools.partial(record_suspended, suspended=suspended, now=self.clock())
        record, _ = await self.schedules.mutate(name, change)
        return record

    async def delete(self, name: str) -> None:
        """The schedule goes; runs it started go on."""
        await self.schedules.delete(name)

    async def backfill(self, name: str, start: datetime, end: datetime) -> list[str]:
        """Start the ticks in ``[start, end]``; a tick that fired already is not started again."""
        ticks = backfill_ticks((await self.get(name)).spec, start, end)
        # a tick whose run exists fired already (or was backfilled): it is not started or counted again
        fresh = [tick for tick in ticks if await self.runs.get(tick_run_id(name, tick)) is None]
        await self.schedules.mutate(name, functools.partial(record_backfill, ticks=fresh))
        await self.start_pending(name)
        return [tick_run_id(name, tick) for tick in ticks]

    # -- the ticker -----------------------------------------------------------------------------

    async def tick(self) -> list[str]:
        """One pass over every schedule; the runs it started."""
        started: list[str] = []
        for name in await self.schedules.names():
            try:
                started += await self.tick_schedule(name)
            except ScheduleNotFound:
                continue  # deleted meanwhile
            except Exception:
                log.exception("a schedule's pass failed; trying again next pass", extra={"schedule": name})
        return started

    async def tick_schedule(self, name: str) -> list[str]:
        found = await self.schedules.get(name)
        if found is None:
            return []
        running = [run_id for run_id in found[0].active_runs if await self._running(run_id)]
        change = functools.partial(record_pass, now=self.clock(), running=running)
        _, plan = await self.schedules.mutate(name, change)
        for run_id in plan.cancel:
            await self.cancel_run(run_id, f"schedule:{name}")
        if plan.missed or plan.forbidden:
            log.info(
                "schedule ticks dropped",
                extra={"schedule": name, "missed": plan.missed, "forbidden": plan.forbidden},
            )
        return await self.start_pending(name)

    async def start_pending(self, name: str) -> list[str]:
        """Start the run of every pending tick (once: the run id is the tick's), then mark it."""
        record = await self.get(name)
        started = []
        for tick in record.pending:
            run_id = tick_run_id(name, tick)
            await self.start_run(run_id, record.spec.pipeline, f"schedule:{name}")
            await self.schedules.mutate(name, functools.partial(record_started, tick=tick, run_id=run_id))
            started.append(run_id)
        return started

    async def _running(self, run_id: str) -> bool:
        found = await self.runs.get(run_id)
        return found is not None and found[0].state == RunState.running
