"""``/v1/schedules``: cron schedules of pipelines over HTTP, answered by the workflow service on
``<prefix>.workflow.schedule-<verb>`` (request/reply), as ``/v1/pipelines`` is (pipelines.py).

A schedule's pipeline is held to the creator's queue rules when it is created, as a pipeline run
is. A team sees and changes its own schedules only; the admin all of them.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainyard_contracts.runs import PipelineRequest
from trainyard_contracts.schedules import ScheduleRecord, ScheduleReply, ScheduleRequest
from trainyard_contracts.spec import NAME_PATTERN
from trainyard_submission.api import Caller, Problem, authorised
from trainyard_submission.pipelines import check_steps
from trainyard_submission.tokens import Principal
from trainyard_submission.workflowask import ask_workflow_for, json_object, may_see, public, visible_public


class BackfillBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    start: datetime = Field(alias="from", description="the first instant (inclusive), with its offset")
    end: datetime = Field(alias="to", description="the last instant (inclusive), with its offset")


def build_schedule_router(state: dict[str, Any]) -> APIRouter:
    router = APIRouter(prefix="/v1/schedules", dependencies=[Depends(authorised)], tags=["schedules"])
    ask = functools.partial(_ask, state)

    @router.post("", status_code=201, summary="create a schedule: cron, timezone, concurrency, pipeline")
    async def create_schedule(request: Request, caller: Caller) -> JSONResponse:
        document = await json_object(request, "schedule")
        pipeline, params = document.get("pipeline"), document.get("params") or {}
        if isinstance(pipeline, dict) and isinstance(params, dict):
            await check_steps(
                state, caller, PipelineRequest.model_validate({"pipeline": pipeline, "params": params})
            )
        answer = await ask("create", ScheduleRequest(schedule=document, by=caller.name))
        return JSONResponse(public(answer.schedule), status_code=201)

    @router.get("", summary="schedules, by name")
    async def list_schedules(
        caller: Caller, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> dict[str, Any]:
        found = (await ask("list", ScheduleRequest(limit=limit))).schedules or []
        return {"schedules": visible_public(caller, found, lambda s: s.created_by)}

    @router.get("/{name}", summary="a schedule: its spec, last tick, runs and dropped ticks")
    async def get_schedule(name: str, caller: Caller) -> dict[str, Any]:
        return public(await _visible(state, caller, name))

    @router.post("/{name}/suspend", summary="suspend a schedule: its ticks are dropped until resumed")
    async def suspend_schedule(name: str, caller: Caller) -> dict[str, Any]:
        await _visible(state, caller, name)
        return public((await ask("suspend", ScheduleRequest(name=name, by=caller.name))).schedule)

    @router.post("/{name}/resume", summary="resume a schedule from now (backfill starts what it missed)")
    async def resume_schedule(name: str, caller: Caller) -> dict[str, Any]:
        await _visible(state, caller, name)
        return public((await ask("resume", ScheduleRequest(name=name, by=caller.name))).schedule)

    @router.delete("/{name}", summary="delete a schedule; the runs it started go on")
    async def delete_schedule(name: str, caller: Caller) -> dict[str, Any]:
        await _visible(state, caller, name)
        await ask("delete", ScheduleRequest(name=name, by=caller.name))
        return {"name": name, "deleted": True}

    @router.post("/{name}/backfill", summary="start the ticks between from and to (inclusive), once each")
    async def backfill_schedule(name: str, request: Request, caller: Caller) -> dict[str, Any]:
        await _visible(state, caller, name)
        try:
            body = BackfillBody.model_validate_json(await request.body())
        except ValidationError as exc:
            raise Problem(422, "invalid request", str(exc)[:1000]) from exc
        answer = await ask(
            "backfill", ScheduleRequest(name=name, start=body.start, end=body.end, by=caller.name)
        )
        return {"schedule": public(answer.schedule), "run_ids": answer.run_ids or []}

    return router


async def _ask(state: dict[str, Any], verb: str, request: ScheduleRequest) -> ScheduleReply:
    return await ask_workflow_for(state, f"schedule-{verb}", request, ScheduleReply)


async def _visible(state: dict[str, Any], caller: Principal, name: str) -> ScheduleRecord:
    if not re.match(NAME_PATTERN, name):
        raise Problem(404, "no such schedule", name[:100])
    record = (await _ask(state, "get", ScheduleRequest(name=name))).schedule
    if record is None or not may_see(caller, record.created_by):
        raise Problem(404, "no such schedule", name)
    return record
