"""``/v1/models/{name}/…`` and ``/v1/audit``: aliases, versions, comparisons and the audit stream.

The registry service owns MLflow and the alias records; this API checks the token and the alias
rules (aliasrules.py), then asks the registry on ``<prefix>.registry.<kind>`` (request/reply), as
pipelines ask the workflow service. A change is sent with the alias revision the rules were
checked on, so the registry refuses it (409) if the alias moved in between.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from trainyard_contracts.audit import AuditEntry
from trainyard_contracts.modelregistry import (
    ALIAS_PATTERN,
    MODEL_NAME_PATTERN,
    AliasChange,
    AliasView,
    Comparison,
    Identity,
    IfBetter,
    ModelLineage,
    RegistryReply,
    RegistryRequest,
    VersionInfo,
    check_alias,
)
from trainyard_shared.auditlog import read_audit
from trainyard_submission.aliasrules import check_alias_change, may_read_version
from trainyard_submission.api import Caller, Problem, ask_service, authorised
from trainyard_submission.tokens import Principal

ModelName = Annotated[str, Path(pattern=MODEL_NAME_PATTERN, description="the registered model")]
AliasName = Annotated[str, Path(pattern=ALIAS_PATTERN, description="the alias, e.g. production")]
VersionNumber = Annotated[int, Path(ge=1, le=2**31 - 1)]
TITLES = {404: "not found", 409: "alias conflict", 422: "invalid request"}


class PromoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=2**31 - 1)
    expected_revision: int | None = Field(
        None, ge=0, description="the alias revision you decided on (0: unset); refused with 409 if it moved"
    )
    if_better: IfBetter | None = Field(None, description="promote only if the metric beats the holder's")


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expected_revision: int | None = Field(None, ge=0)


def identity(caller: Principal) -> Identity:
    return Identity(name=caller.name, token_id=caller.token_id, team=caller.team, admin=caller.admin)


async def ask_registry(state: dict[str, Any], kind: str, request: RegistryRequest) -> RegistryReply:
    """The registry's answer; a refusal is raised as its Problem, no answer as a 503."""
    subject = state["subjects"].registry_request(kind)
    timeout = state["settings"].registry_timeout_seconds
    payload = request.model_dump_json(exclude_none=True).encode()
    answer = RegistryReply.model_validate_json(
        await ask_service(state, subject, payload, timeout, "registry")
    )
    if not answer.ok:
        errors = [e.model_dump() for e in answer.errors]
        detail = "; ".join(e.message for e in answer.errors)
        raise Problem(answer.status, TITLES.get(answer.status, "registry refused"), detail, errors=errors)
    return answer


def _visible(caller: Principal, version: VersionInfo | None) -> VersionInfo | None:
    return version if version is not None and may_read_version(caller, version) else None


def _alias_or_422(alias: str) -> str:
    try:
        return check_alias(alias)
    except ValueError as exc:
        raise Problem(
            422, "invalid request", str(exc), errors=[{"field": "alias", "message": str(exc)}]
        ) from exc


def _change(answer: RegistryReply) -> AliasChange:
    return AliasChange(
        changed=answer.changed,
        reason=answer.reason,
        state=answer.state,
        version=answer.version,
        previous=answer.holder,
    )


Ask = Callable[..., Awaitable[RegistryReply]]


def build_model_router(state: dict[str, Any]) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(authorised)], tags=["models"])

    async def ask(kind: str, **fields: Any) -> RegistryReply:
        return await ask_registry(state, kind, RegistryRequest(**fields))

    _add_read_routes(router, state)
    _add_alias_change_routes(router, ask, state)
    _add_audit_route(router, state)
    return router


async def read_version(state: dict[str, Any], caller: Principal, name: str, version: int) -> VersionInfo:
    """One version ``caller`` may read; 404 otherwise."""
    answer = await ask_registry(state, "version", RegistryRequest(name=name, version=version))
    found = _visible(caller, answer.version)
    if found is None:
        raise Problem(404, "not found", f"model {name!r} has no version {version}")
    return found


async def read_alias(state: dict[str, Any], caller: Principal, name: str, alias: str) -> AliasView:
    """An alias (holder, history, revision) of a version ``caller`` may read; 404 otherwise."""
    answer = await ask_registry(state, "alias", RegistryRequest(name=name, alias=_alias_or_422(alias)))
    assert answer.state is not None
    if answer.holder is not None and _visible(caller, answer.holder) is None:
        raise Problem(404, "not found", f"model {name!r} has no alias {alias!r}")
    if answer.state.version is None:
        raise Problem(404, "not found", f"model {name!r} has no alias {alias!r}")
    return AliasView(state=answer.state, version=answer.holder)


async def compare_versions(state: dict[str, Any], caller: Principal, name: str, a: int, b: int) -> Comparison:
    """Versions ``a`` and ``b`` side by side, both readable by ``caller``; 404 otherwise."""
    request = RegistryRequest(name=name, version=a, other_version=b)
    versions = (await ask_registry(state, "compare", request)).versions
    if any(_visible(caller, v) is None for v in versions):
        raise Problem(404, "not found", f"model {name!r}: version {a} or {b} is not yours to read")
    return Comparison(name=name, versions=versions)


async def rollback_alias(
    state: dict[str, Any], caller: Principal, name: str, alias: str, expected_revision: int | None
) -> AliasChange:
    """The alias's previous holder again, if ``caller`` may move it there (Forbidden otherwise);
    refused (409) if the alias moved since ``expected_revision``."""
    current = await ask_registry(state, "alias", RegistryRequest(name=name, alias=_alias_or_422(alias)))
    assert current.state is not None
    # the rules are checked on what would be restored (with nothing to restore, on the holder:
    # the registry then says why there is nothing to roll back, to whom may move it)
    target = current.version or current.holder
    if target is not None:
        check_alias_change(caller, state["settings"].alias_rules, name, alias, target, current.holder)
    expected = expected_revision if expected_revision is not None else current.state.revision
    request = RegistryRequest(name=name, alias=alias, expected_revision=expected, by=identity(caller))
    return _change(await ask_registry(state, "rollback", request))


def _add_read_routes(router: APIRouter, state: dict[str, Any]) -> None:
    @router.get("/models/{name}/versions/{version}", summary="one model version: params, metrics, provenance")
    async def get_version(name: ModelName, version: VersionNumber, caller: Caller) -> VersionInfo:
        return await read_version(state, caller, name, version)

    @router.get(
        "/models/{name}/versions/{version}/lineage",
        summary="where a version came from: job, attempt, executor, code, pipeline, image, datasets",
    )
    async def get_lineage(name: ModelName, version: VersionNumber, caller: Caller) -> ModelLineage:
        return ModelLineage.of(await get_version(name, version, caller))

    @router.get("/models/{name}/aliases/{alias}", summary="an alias: its holder and previous holders")
    async def get_alias(name: ModelName, alias: AliasName, caller: Caller) -> AliasView:
        return await read_alias(state, caller, name, alias)

    @router.get("/models/{name}/compare", summary="two versions side by side: params, metrics, provenance")
    async def compare(
        name: ModelName,
        caller: Caller,
        a: Annotated[int, Query(ge=1, le=2**31 - 1, description="the first version")],
        b: Annotated[int, Query(ge=1, le=2**31 - 1, description="the second version")],
    ) -> Comparison:
        return await compare_versions(state, caller, name, a, b)


def _add_alias_change_routes(router: APIRouter, ask: Ask, state: dict[str, Any]) -> None:
    @router.post("/models/{name}/aliases/{alias}", summary="promote: point the alias at a version")
    async def promote(name: ModelName, alias: AliasName, body: PromoteBody, caller: Caller) -> AliasChange:
        current = await ask("alias", name=name, alias=_alias_or_422(alias), version=body.version)
        assert current.state is not None and current.version is not None
        check_alias_change(
            caller, state["settings"].alias_rules, name, alias, current.version, current.holder
        )
        expected = body.expected_revision if body.expected_revision is not None else current.state.revision
        answer = await ask(
            "promote",
            name=name,
            alias=alias,
            version=body.version,
            expected_revision=expected,
            if_better=body.if_better,
            by=identity(caller),
        )
        return _change(answer)

    @router.post("/models/{name}/aliases/{alias}/rollback", summary="roll back: the previous holder again")
    async def rollback(
        name: ModelName, alias: AliasName, caller: Caller, body: RollbackBody | None = None
    ) -> AliasChange:
        given = body.expected_revision if body is not None else None
        return await rollback_alias(state, caller, name, alias, given)


def _add_audit_route(router: APIRouter, state: dict[str, Any]) -> None:
    @router.get("/audit", summary="the audit stream: who promoted or rolled back what, and when")
    async def audit(
        caller: Caller,
        since: Annotated[datetime | None, Query(description="ISO 8601 with offset")] = None,
        who: Annotated[str | None, Query(max_length=128, description="actor, token id or team")] = None,
        model: Annotated[str | None, Query(pattern=MODEL_NAME_PATTERN)] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> dict[str, Any]:
        def keep(entry: AuditEntry) -> bool:
            if not caller.admin and entry.team != caller.team:
                return False  # a team reads its own tokens' entries
            if who is not None and who not in (entry.actor, entry.token_id, entry.team):
                return False
            return model is None or entry.model == model

        if since is not None and since.tzinfo is None:
            raise Problem(422, "invalid request", "since: give the offset too (+01:00, or Z for UTC)")
        entries = await read_audit(state["js"], state["subjects"], keep, since, limit)
        return {"entries": [e.model_dump(mode="json") for e in entries]}
