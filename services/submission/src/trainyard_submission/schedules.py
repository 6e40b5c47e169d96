"""``/v1/schedules``: cron schedules of pipelines over HTTP, answered by the workflow service on
``<prefix>.workflow.schedule-<verb>`` (request/reply), as ``/v1/pipelines`` is (pipelines.py).

A schedule's pipeline is held to the creator's queue rules when it is created, as a pipeline run
is. A team sees and changes its own schedules only; the admin all of them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainyard_contracts.schedules import ScheduleReply, ScheduleRequest
from trainyard_submission.api import Caller, Problem, authorised
from trainyard_submission.pipelines import pipeline_document_check
from trainyard_submission.workflowask import NamedObjects, public


class BackfillBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    start: datetime = Field(alias="from", description="the first instant (inclusive), with its offset")
    end: datetime = Field(alias="to", description="the last instant (inclusive), with its offset")


def build_schedule_router(state: dict[str, Any]) -> APIRouter:
    router = APIRouter(prefix="/v1/schedules", dependencies=[Depends(authorised)], tags=["schedules"])
    schedules = NamedObjects(state, "schedule", ScheduleReply, ScheduleRequest)

    schedules.add_routes(
        router,
        pipeline_document_check(state),
        created="create a schedule: cron, timezone, concurrency, pipeline",
        listed="schedules, by name",
        shown="a schedule: its spec, last tick, runs and dropped ticks",
        deleted="delete a schedule; the runs it started go on",
    )

    schedules.add_suspend_routes(
        router,
        suspended="suspend a schedule: its ticks are dropped until resumed",
        resumed="resume a schedule from now (backfill starts what it missed)",
    )

    @router.post("/{name}/backfill", summary="start the ticks between from and to (inclusive), once each")
    async def backfill_schedule(name: str, request: Request, caller: Caller) -> dict[str, Any]:
        await schedules.visible(caller, name)
        try:
            body = BackfillBody.model_validate_json(await request.body())
        except ValidationError as exc:
            raise Problem(422, "invalid request", str(exc)[:1000]) from exc
        answer = await schedules.ask("backfill", name=name, start=body.start, end=body.end, by=caller.name)
        return {"schedule": public(answer.schedule), "run_ids": answer.run_ids or []}

    return router
