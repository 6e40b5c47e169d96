"""The API's sweep requests on ``<prefix>.workflow.sweep-<verb>`` (request/reply, the workflow's
queue group), answered with a SweepReply: bad input gets 400/404/422 naming the field, never a
dead letter."""

from __future__ import annotations

from collections.abc import Callable

from trainyard_contracts.sweeps import SWEEP_VERBS, SweepReply, SweepRequest
from trainyard_shared.broker import ServiceBroker
from trainyard_workflow.replies import register_named_handlers
from trainyard_workflow.sweeps import SweepService


def register_sweep_handlers(sb: ServiceBroker, sweeps: Callable[[], SweepService]) -> None:
    """``sweeps()`` gives the SweepService once the runtime is built."""
    register_named_handlers(sb, SweepReply, "sweep", SWEEP_VERBS, sweeps, _answer_named)


async def _answer_named(service: SweepService, verb: str, request: SweepRequest) -> SweepReply:
    if verb == "get":
        return SweepReply(ok=True, sweep=await service.status(request.name or ""))
    return SweepReply(ok=True, sweep=await service.cancel(request.name or "", request.by))
