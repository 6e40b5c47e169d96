"""Answers to the API's requests on named objects (schedules, triggers, sweeps): ``create``, ``list`` and
the verbs on one name, with refusals as status and field (the handlers: trainyard_shared.responder)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from trainyard_contracts import FieldError, SpecError
from trainyard_contracts.schedules import ScheduleReply, ScheduleRequest
from trainyard_contracts.sweeps import SweepReply, SweepRequest
from trainyard_contracts.triggers import TriggerReply, TriggerRequest
from trainyard_shared.broker import ServiceBroker
from trainyard_shared.responder import answer_requests
from trainyard_workflow.named_store import RecordExists, RecordNotFound

Reply = TypeVar("Reply", ScheduleReply, TriggerReply, SweepReply)


def refusal(reply: type[Reply], field: str, message: str, status: int) -> Reply:
    return reply(ok=False, errors=[FieldError(field=field, message=message)], status=status)


async def answer_named(
    reply: type[Reply],
    kind: str,
    verb: str,
    body: bytes,
    objects: NamedObjects,
    named: Callable[[Any], Awaitable[Reply]],
) -> Reply:
    """The answer to ``verb`` on a named object (a schedule, a trigger), the body read as
    ``reply``'s request model: ``create`` and ``list`` here, the verbs on one name by ``named``.
    A refusal is answered with its status and the field: 422 (a bad field), 404 (no such name),
    409 (the name is taken), 400 (not a request)."""
    try:
        request: Any = REQUESTS[reply].model_validate_json(body)
        if verb == "create":
            return reply(
                ok=True, status=201, **{kind: await objects.create(getattr(request, kind), request.by)}
            )
        if verb == "list":
            return reply(ok=True, **{f"{kind}s": await objects.store.listed(request.limit)})
        if not request.name:
            return refusal(reply, "name", "required field is missing", 422)
        return await named(request)
    except SpecError as exc:
        return reply(ok=False, errors=exc.errors, status=422)
    except RecordNotFound as exc:
        return refusal(reply, "name", f"no {kind} {exc.args[0]!r}", 404)
    except RecordExists as exc:
        return refusal(reply, "name", f"a {kind} {exc.args[0]!r} exists already (delete it first)", 409)
    except ValueError as exc:  # not a request, or a limit reached
        return refusal(reply, "(request)", str(exc)[:1000], 400)


Named = Callable[[Any, str, Any], Awaitable[Any]]  # (service, verb, request) -> the reply


def register_named_handlers(
    sb: ServiceBroker,
    reply: type[Reply],
    kind: str,
    verbs: Iterable[str],
    objects: Callable[[], NamedObjects],
    named: Named,
) -> None:
    """Answer the API's ``<kind>-<verb>`` requests on ``<prefix>.workflow.<kind>-<verb>``
    (request/reply, the workflow's queue group) with ``reply``s: ``create`` and ``list`` by
    :func:`answer_named`, the verbs on one name by ``named(service, verb, request)``.
    ``objects()`` gives the service once the runtime is built."""
    for verb in verbs:
        subject_kind = f"{kind}-{verb}"
        answer_requests(
            sb,
            sb.subjects.workflow_request(subject_kind),
            "workflow",
            f"workflow/{subject_kind}",
            f"the API's {kind} {verb} request ({REQUESTS[reply].__name__}) answered with a {reply.__name__}",
            functools.partial(_answer_verb, reply, kind, verb, objects, named),
        )


async def _answer_verb(
    reply: type[Reply], kind: str, verb: str, objects: Callable[[], NamedObjects], named: Named, body: bytes
) -> Reply:
    service = objects()
    return await answer_named(reply, kind, verb, body, service, functools.partial(named, service, verb))


class NamedObjects(Protocol):
    """A service of named objects: creates them and keeps them in a store."""

    @property
    def store(self) -> Any: ...

    async def create(self, document: Any, by: str | None = None) -> Any: ...


REQUESTS: dict[type[BaseModel], type[BaseModel]] = {
    ScheduleReply: ScheduleRequest,
    TriggerReply: TriggerRequest,
    SweepReply: SweepRequest,
}
