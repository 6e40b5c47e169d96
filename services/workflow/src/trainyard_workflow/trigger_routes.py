"""The API's trigger requests on ``<prefix>.workflow.trigger-<verb>`` (request/reply, the
workflow's queue group), answered with a TriggerReply: bad input gets 400/404/409/422 naming the
field, never a dead letter."""

from __future__ import annotations

from collections.abc import Callable

from trainyard_contracts.triggers import TRIGGER_VERBS, TriggerReply, TriggerRequest
from trainyard_shared.broker import ServiceBroker
from trainyard_workflow.replies import register_named_handlers
from trainyard_workflow.triggers import TriggerService


def register_trigger_handlers(sb: ServiceBroker, triggers: Callable[[], TriggerService]) -> None:
    """``triggers()`` gives the TriggerService once the runtime is built."""
    register_named_handlers(sb, TriggerReply, "trigger", TRIGGER_VERBS, triggers, _answer_named)


async def _answer_named(service: TriggerService, verb: str, request: TriggerRequest) -> TriggerReply:
    if verb == "get":
        return TriggerReply(ok=True, trigger=await service.get(request.name or ""))
    if verb in ("suspend", "resume"):
        return TriggerReply(ok=True, trigger=await service.suspend(request.name or "", verb == "suspend"))
    await service.delete(request.name or "")
    return TriggerReply(ok=True)
