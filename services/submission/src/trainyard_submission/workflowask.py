"""What the API's routes to the workflow service share (pipelines, schedules, arrays, triggers):
the request/reply on ``<prefix>.workflow.<kind>``, who may see an object, its public form.

The submission service stays the one public API with the one token check; it asks the workflow
service and answers with what it says (docs/workflows.md, "How the API reaches the workflow
service"). A team sees and changes its own objects only; the admin all of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel

from trainyard_contracts.runs import PipelineReply
from trainyard_contracts.schedules import ScheduleReply
from trainyard_submission.api import Problem, ask_service
from trainyard_submission.tokens import Principal

WORKFLOW_TIMEOUT_SECONDS = 30.0


Reply = TypeVar("Reply", PipelineReply, ScheduleReply)
Item = TypeVar("Item", bound=BaseModel)


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


def visible_public(
    caller: Principal, records: Iterable[Item], owner: Callable[[Item], str | None]
) -> list[dict[str, Any]]:
    """The public form of the records ``caller`` may see, in their order."""
    return [public(r) for r in records if may_see(caller, owner(r))]


async def json_object(request: Request, kind: str) -> dict[str, Any]:
    """The body as a JSON object (a document of fields); 422 otherwise."""
    try:
        document = json.loads(await request.body())
    except ValueError as exc:
        raise Problem(422, "invalid request", f"the body is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise Problem(422, "invalid request", f"expected a {kind} document (a JSON object)")
    return document
