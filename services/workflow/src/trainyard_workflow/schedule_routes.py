"""The API's schedule requests on ``<prefix>.workflow.schedule-<verb>`` (request/reply, the
workflow's queue group), answered with a ScheduleReply: bad input gets 400/404/409/422 naming the
field, never a dead letter."""

from __future__ import annotations

import functools
from typing import Any

from trainyard_contracts.schedules import SCHEDULE_VERBS, ScheduleReply, ScheduleRequest
from trainyard_shared.broker import ServiceBroker
from trainyard_shared.responder import answer_requests
from trainyard_workflow.replies import answer_named, refusal
from trainyard_workflow.schedules import ScheduleService


def schedule_request_kind(verb: str) -> str:
    return f"schedule-{verb}"


def register_schedule_handlers(sb: ServiceBroker, schedules: Any) -> None:
    """``schedules()`` gives the ScheduleService once the runtime is built."""
    for verb in SCHEDULE_VERBS:
        _handler(sb, verb, schedules)


def _handler(sb: ServiceBroker, verb: str, schedules: Any) -> None:
    kind = schedule_request_kind(verb)

    async def answer(body: bytes) -> ScheduleReply:
        return await answer_schedule_request(schedules(), verb, body)

    answer_requests(
        sb,
        sb.subjects.workflow_request(kind),
        "workflow",
        f"workflow/{kind}",
        f"the API's schedule {verb} request (ScheduleRequest) answered with a ScheduleReply",
        answer,
    )


async def answer_schedule_request(service: ScheduleService, verb: str, body: bytes) -> ScheduleReply:
    named = functools.partial(_answer_named, service, verb)
    return await answer_named(ScheduleReply, "schedule", verb, body, service, named)


async def _answer_named(service: ScheduleService, verb: str, request: ScheduleRequest) -> ScheduleReply:
    name = request.name or ""
    if verb == "get":
        return ScheduleReply(ok=True, schedule=await service.get(name))
    if verb in ("suspend", "resume"):
        return ScheduleReply(ok=True, schedule=await service.suspend(name, verb == "suspend"))
    if verb == "delete":
        await service.delete(name)
        return ScheduleReply(ok=True)
    if request.start is None or request.end is None:
        field = "start" if request.start is None else "end"
        return refusal(ScheduleReply, field, "required for a backfill", 422)
    run_ids = await service.backfill(name, request.start, request.end)
    return ScheduleReply(ok=True, schedule=await service.get(name), run_ids=run_ids)
