"""The API's sweep requests on ``<prefix>.workflow.sweep-<verb>`` (request/reply, the workflow's
queue group), answered with a SweepReply: bad input gets 400/404/422 naming the field, never a
dead letter."""

from __future__ import annotations

import functools
from collections.abc import Callable

from trainyard_contracts.sweeps import SWEEP_VERBS, SweepReply, SweepRequest
from trainyard_shared.broker import ServiceBroker
from trainyard_shared.responder import answer_requests
from trainyard_workflow.replies import answer_named
from trainyard_workflow.sweeps import SweepService


def register_sweep_handlers(sb: ServiceBroker, sweeps: Callable[[], SweepService]) -> None:
    """``sweeps()`` gives the SweepService once the runtime is built."""
    for verb in SWEEP_VERBS:
        kind = f"sweep-{verb}"
        answer_requests(
            sb,
            sb.subjects.workflow_request(kind),
            "workflow",
            f"workflow/{kind}",
            f"the API's sweep {verb} request (SweepRequest) answered with a SweepReply",
            functools.partial(_answer, sweeps, verb),
        )


async def _answer(sweeps: Callable[[], SweepService], verb: str, body: bytes) -> SweepReply:
    service = sweeps()
    named = functools.partial(_answer_named, service, verb)
    return await answer_named(SweepReply, "sweep", verb, body, service, named)


async def _answer_named(service: SweepService, verb: str, request: SweepRequest) -> SweepReply:
    if verb == "get":
        return SweepReply(ok=True, sweep=await service.status(request.name or ""))
    return SweepReply(ok=True, sweep=await service.cancel(request.name or "", request.by))
