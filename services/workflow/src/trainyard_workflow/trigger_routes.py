"""The API's trigger requests on ``<prefix>.workflow.trigger-<verb>`` (request/reply, the
workflow's queue group), answered with a TriggerReply: bad input gets 400/404/409/422 naming the
field, never a dead letter."""

from __future__ import annotations

import functools
from collections.abc import Callable

from trainyard_contracts.triggers import TRIGGER_VERBS, TriggerReply, TriggerRequest
from trainyard_shared.broker import ServiceBroker
from trainyard_shared.responder import answer_requests
from trainyard_workflow.replies import answer_named, refusal
from trainyard_workflow.triggers import TriggerService


def register_trigger_handlers(sb: ServiceBroker, triggers: Callable[[], TriggerService]) -> None:
    """``triggers()`` gives the TriggerService once the runtime is built."""
    for verb in TRIGGER_VERBS:
        kind = f"trigger-{verb}"
        answer_requests(
            sb,
            sb.subjects.workflow_request(kind),
            "workflow",
            f"workflow/{kind}",
            f"the API's trigger {verb} request (TriggerRequest) answered with a TriggerReply",
            functools.partial(_answer, triggers, verb),
        )


async def _answer(triggers: Callable[[], TriggerService], verb: str, body: bytes) -> TriggerReply:
    return await answer_trigger_request(triggers(), verb, body)


async def answer_trigger_request(service: TriggerService, verb: str, body: bytes) -> TriggerReply:
    return await answer_named(
        TriggerReply, "trigger", body, functools.partial(_answer_request, service, verb)
    )


async def _answer_request(service: TriggerService, verb: str, request: TriggerRequest) -> TriggerReply:
    if verb == "create":
        return TriggerReply(ok=True, status=201, trigger=await service.create(request.trigger, request.by))
    if verb == "list":
        return TriggerReply(ok=True, triggers=await service.triggers.listed(request.limit))
    if not request.name:
        return refusal(TriggerReply, "name", "required field is missing", 422)
    if verb == "get":
        return TriggerReply(ok=True, trigger=await service.get(request.name))
    await service.delete(request.name)
    return TriggerReply(ok=True)
