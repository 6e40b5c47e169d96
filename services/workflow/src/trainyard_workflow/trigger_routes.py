"""The API's trigger requests on ``<prefix>.workflow.trigger-<verb>`` (request/reply, the
workflow's queue group), answered with a TriggerReply: bad input gets 400/404/409/422 naming the
field, never a dead letter."""

from __future__ import annotations

import functools
from collections.abc import Callable

from trainyard_contracts.triggers import TRIGGER_VERBS, TriggerReply, TriggerRequest
from trainyard_shared.broker import ServiceBroker
from trainyard_shared.responder import answer_requests
from trainyard_workflow.replies import answer_named
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
    named = functools.partial(_answer_named, service, verb)
    return await answer_named(TriggerReply, "trigger", verb, body, service, named)


async def _answer_named(service: TriggerService, verb: str, request: TriggerRequest) -> TriggerReply:
    if verb == "get":
        return TriggerReply(ok=True, trigger=await service.get(request.name or ""))
    await service.delete(request.name or "")
    return TriggerReply(ok=True)
