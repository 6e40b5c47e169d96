"""The API's schedule requests on ``<prefix>.workflow.schedule-<verb>`` (request/reply, the
workflow's queue group), answered with a ScheduleReply: bad input gets 400/404/409/422 naming the
field, never a dead letter."""

from __future__ import annotations

from collections.abc import Callable

from trainyard_contracts.schedules import SCHEDULE_VERBS, ScheduleReply, ScheduleRequest
from trainyard_shared.broker import ServiceBroker
from trainyard_workflow.replies import refusal, register_named_handlers
from trainyard_workflow.schedules import ScheduleService


def register_schedule_handlers(sb: ServiceBroker, schedules: Callable[[], ScheduleService]) -> None:
    """``schedules()`` gives the ScheduleService once the runtime is built."""
    register_named_handlers(sb, ScheduleReply, "schedule", SCHEDULE_VERBS, schedules, _answer_named)


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
