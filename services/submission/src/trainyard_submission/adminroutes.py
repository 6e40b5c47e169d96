"""``/v1/queues`` and ``/v1/tokens``: queue configuration and API tokens (writes: admin)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainyard_contracts import QueueConfig, SpecError
from trainyard_contracts.spec import QueueName, field_errors
from trainyard_submission.api import Admin, IfMatch, Problem, QueuePath, RouteDeps, authorised
from trainyard_submission.queuestore import QueueNotFound, RevisionMismatch
from trainyard_submission.tokens import TokenNotFound


class QueueBody(QueueConfig):
    """A queue's configuration as PUT: ``name`` may be left out (the path names the queue)."""

    name: QueueName | None = None  # type: ignore[assignment]


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    team: QueueName | None = Field(None, description="the queue this token may act on")
    admin: bool = Field(False, description="an admin token: every queue, queue and token management")
    description: str = Field("", max_length=256)

    @model_validator(mode="after")
    def _one_kind(self) -> TokenRequest:
        if self.admin == (self.team is not None):
            raise ValueError("give either team (a team token) or admin: true, not both")
        return self


def build_admin_router(state: dict[str, Any]) -> APIRouter:
    deps = RouteDeps(state)
    router = APIRouter(prefix="/v1", dependencies=[Depends(authorised)])
    add_queue_routes(router, deps)
    add_token_routes(router, deps)
    return router


def add_queue_routes(router: APIRouter, deps: RouteDeps) -> None:
    """Queue configuration (writes: admin)."""

    @router.get("/queues", summary="every queue's configuration (built-in default included)")
    async def list_queues() -> dict[str, Any]:
        return {"queues": [q.as_json() for q in await deps.queues().list()]}

    @router.get("/queues/{name}", summary="one queue's configuration")
    async def get_queue(name: QueuePath) -> dict[str, Any]:
        stored = await deps.queues().get(name)
        if stored is None:
            detail = f"queue {name!r} has no configuration (built-in defaults apply)"
            raise Problem(404, "no such queue", detail)
        return stored.as_json()

    @router.put("/queues/{name}", summary="create or replace a queue's configuration (admin)")
    async def put_queue(
        name: QueuePath, body: QueueBody, caller: Admin, if_match: IfMatch = None
    ) -> JSONResponse:
        if body.name is not None and body.name != name:
            raise Problem(
                422,
                "invalid queue configuration",
                "the body names another queue than the path",
                errors=[{"field": "name", "message": f"must be {name!r} (the path's queue) or left out"}],
            )
        try:
            config = QueueConfig.model_validate({**body.model_dump(exclude={"name"}), "name": name})
        except ValidationError as exc:  # pragma: no cover - QueueBody validated the same fields
            errors = [e.model_dump() for e in field_errors(exc)]
            raise Problem(422, "invalid queue configuration", "see errors", errors=errors) from exc
        try:
            stored, created = await deps.queues().put(config, if_match)
        except RevisionMismatch as exc:
            raise Problem(412, "queue changed", str(exc), revision=exc.actual) from exc
        what = "created" if created else "replaced"
        await deps.audit(caller, "queue.put", f"queue:{name}", stored.as_json(), detail=what)
        return JSONResponse(stored.as_json(), status_code=201 if created else 200)

    @router.delete("/queues/{name}", status_code=204, summary="remove a queue's configuration (admin)")
    async def delete_queue(name: QueuePath, caller: Admin, if_match: IfMatch = None) -> Response:
        try:
            await deps.queues().delete(name, if_match)
        except QueueNotFound as exc:
            raise Problem(404, "no such queue", f"queue {name!r} has no configuration") from exc
        except RevisionMismatch as exc:
            raise Problem(412, "queue changed", str(exc), revision=exc.actual) from exc
        await deps.audit(caller, "queue.delete", f"queue:{name}")
        return Response(status_code=204)


def add_token_routes(router: APIRouter, deps: RouteDeps) -> None:
    """API tokens (admin)."""

    @router.post("/tokens", status_code=201, summary="create a team or admin token (admin); shown once")
    async def create_token(body: TokenRequest, caller: Admin) -> JSONResponse:
        if body.team is not None:
            try:
                await deps.queues().require(body.team, field="team")
            except SpecError as exc:
                errors = [e.model_dump() for e in exc.errors]
                raise Problem(422, "unknown team", str(exc), errors=errors) from exc
        record, token = await deps.tokens().create(body.team, body.admin, body.description)
        await deps.audit(
            caller, "token.create", f"token:{record.token_id}", {"team": record.team, "admin": record.admin}
        )
        return JSONResponse({**record.public(), "token": token}, status_code=201)

    @router.get("/tokens", summary="every token's id, team and description (never the token) (admin)")
    async def list_tokens(_: Admin) -> dict[str, Any]:
        return {"tokens": [r.public() for r in await deps.tokens().list()]}

    @router.delete("/tokens/{token_id}", status_code=204, summary="revoke a token (admin)")
    async def revoke_token(
        token_id: Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")], caller: Admin
    ) -> Response:
        try:
            revoked = await deps.tokens().revoke(token_id)
        except TokenNotFound as exc:
            raise Problem(404, "no such token", token_id) from exc
        await deps.audit(
            caller, "token.revoke", f"token:{token_id}", {"team": revoked.team, "admin": revoked.admin}
        )
        return Response(status_code=204)
