"""What the API's routes to the workflow service share (pipelines, schedules, arrays, triggers):
the request/reply on ``<prefix>.workflow.<kind>``, who may see an object, its public form.

The submission service stays the one public API with the one token check; it asks the workflow
service and answers with what it says (docs/workflows.md, "How the API reaches the workflow
service"). A team sees and changes its own objects only; the admin all of them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from trainyard_contracts.runs import PipelineReply
from trainyard_contracts.schedules import ScheduleReply
from trainyard_contracts.spec import NAME_PATTERN
from trainyard_contracts.sweeps import SweepReply
from trainyard_contracts.triggers import TriggerReply
from trainyard_submission.api import Caller, Problem, ask_service
from trainyard_submission.tokens import Principal

WORKFLOW_TIMEOUT_SECONDS = 30.0


Reply = TypeVar("Reply", PipelineReply, ScheduleReply, TriggerReply, SweepReply)


async def ask_workflow_for(
    state: dict[str, Any], kind: str, request: BaseModel, reply_model: type[Reply]
) -> Reply:
    """The workflow service's answer; a refusal is raised as its Problem, no answer as a 503."""
    subject = state["subjects"].workflow_request(kind)
    payload = request.model_dump_json().encode()
    body = await ask_service(state, subject, payload, WORKFLOW_TIMEOUT_SECONDS, "workflow")
    answer = reply_model.model_validate_json(body)
    if not answer.ok:
        errors = [e.model_dump() for e in answer.errors]
        detail = "; ".join(f"{e.field}: {e.message}" for e in answer.errors)
        what = kind.split("-", 1)[0] if "-" in kind else "pipeline"  # schedule-get: a schedule's
        raise Problem(answer.status, f"{what} request refused", detail, errors=errors)
    return answer


def may_see(caller: Principal, owner: str | None) -> bool:
    return caller.admin or owner == caller.name


def public(record: BaseModel | None) -> dict[str, Any]:
    return record.model_dump(mode="json") if record is not None else {}


async def json_object(request: Request, kind: str) -> dict[str, Any]:
    """The body as a JSON object (a document of fields); 422 otherwise."""
    try:
        document = json.loads(await request.body())
    except ValueError as exc:
        raise Problem(422, "invalid request", f"the body is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise Problem(422, "invalid request", f"expected a {kind} document (a JSON object)")
    return document


NamedReply = TypeVar("NamedReply", ScheduleReply, TriggerReply, SweepReply)
# a document held to the creator's queue rules; it may answer the document placed (a team's queue)
CheckDocument = Callable[[Principal, dict[str, Any]], Awaitable[dict[str, Any] | None]]


@dataclass(frozen=True)
class NamedObjects(Generic[NamedReply]):
    """A kind of named object the workflow service owns (``schedule``, ``trigger``, ``sweep``,
    named by its id): asked on
    ``<prefix>.workflow.<kind>-<verb>``, its reply holding it as ``<kind>`` and a list as
    ``<kind>s``, owned by ``created_by``."""

    state: dict[str, Any]
    kind: str
    reply: type[NamedReply]
    request: type[BaseModel]

    async def ask(self, verb: str, **fields: Any) -> NamedReply:
        return await ask_workflow_for(self.state, f"{self.kind}-{verb}", self.request(**fields), self.reply)

    async def visible(self, caller: Principal, name: str) -> Any:
        """The object ``caller`` may see (its own, or any for the admin); 404 otherwise."""
        if not re.match(NAME_PATTERN, name):  # no key the bucket could hold
            raise Problem(404, f"no such {self.kind}", name[:100])
        record = getattr(await self.ask("get", name=name), self.kind)
        if record is None or not may_see(caller, record.created_by):
            raise Problem(404, f"no such {self.kind}", name)
        return record

    async def listed(self, caller: Principal, limit: int = 100) -> list[Any]:
        """The objects ``caller`` may see, by name (its own, or all for the admin)."""
        found = getattr(await self.ask("list", limit=limit), f"{self.kind}s") or []
        return [r for r in found if may_see(caller, r.created_by)]

    async def suspend(self, caller: Principal, name: str, verb: str) -> Any:
        """``verb`` (suspend or resume) the object ``caller`` may see; its record after."""
        await self.visible(caller, name)
        return getattr(await self.ask(verb, name=name, by=caller.name), self.kind)

    def add_routes(
        self,
        router: APIRouter,
        check: CheckDocument,
        *,
        created: str,
        listed: str,
        shown: str,
        deleted: str | None,
    ) -> None:
        """``POST ""`` (the document held to the creator's queue rules first by ``check``: the
        jobs it will submit, as a run of a pipeline is), ``GET ""`` (the caller's, by name),
        ``GET /{name}``, and with ``deleted`` ``DELETE /{name}``."""

        @router.post("", status_code=201, summary=created)
        async def create_named(request: Request, caller: Caller) -> JSONResponse:
            document = await json_object(request, self.kind)
            document = await check(caller, document) or document
            answer = await self.ask("create", **{self.kind: document, "by": caller.name})
            return JSONResponse(public(getattr(answer, self.kind)), status_code=201)

        @router.get("", summary=listed)
        async def list_named(
            caller: Caller, limit: Annotated[int, Query(ge=1, le=1000)] = 100
        ) -> dict[str, Any]:
            return {f"{self.kind}s": [public(r) for r in await self.listed(caller, limit)]}

        @router.get("/{name}", summary=shown)
        async def get_named(name: str, caller: Caller) -> dict[str, Any]:
            return public(await self.visible(caller, name))

        if deleted is None:
            return

        @router.delete("/{name}", summary=deleted)
        async def delete_named(name: str, caller: Caller) -> dict[str, Any]:
            await self.visible(caller, name)
            await self.ask("delete", name=name, by=caller.name)
            return {"name": name, "deleted": True}

    def add_suspend_routes(self, router: APIRouter, *, suspended: str, resumed: str) -> None:
        """``POST /{name}/suspend`` and ``/resume`` (on the caller's own, or any for the admin)."""

        @router.post("/{name}/suspend", summary=suspended)
        async def suspend_named(name: str, caller: Caller) -> dict[str, Any]:
            return public(await self.suspend(caller, name, "suspend"))

        @router.post("/{name}/resume", summary=resumed)
        async def resume_named(name: str, caller: Caller) -> dict[str, Any]:
            return public(await self.suspend(caller, name, "resume"))
