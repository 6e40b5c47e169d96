"""The UI's model pages: a model's versions and aliases (with their history), "Roll back" on an
alias, two versions compared side by side, and a version with its lineage.

Every read and the rollback go through the API's own functions (``modelroutes.read_version``,
``read_alias``, ``compare_versions``, ``rollback_alias``; the lineage built as ``GET …/lineage``
builds it): the same registry requests, the same alias rules (a team token may not move
``production`` by default: 403 here as there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from trainyard_contracts.modelregistry import (
    ALIAS_PATTERN,
    MODEL_NAME_PATTERN,
    AliasView,
    ModelLineage,
    VersionInfo,
)
from trainyard_submission.access import Forbidden, may_read_model
from trainyard_submission.api import Problem, RouteDeps
from trainyard_submission.modelroutes import compare_versions, read_alias, read_version, rollback_alias
from trainyard_submission.ui.pages import FormRefused, Viewed, Viewer, checked_form, refused, render

ModelName = Annotated[str, Path(pattern=MODEL_NAME_PATTERN)]
AliasName = Annotated[str, Path(pattern=ALIAS_PATTERN)]
# the registry is asked about this many of the newest versions for the aliases they hold
VERSIONS_ASKED = 20


def add_model_routes(router: APIRouter, state: dict[str, Any]) -> None:
    deps = RouteDeps(state)

    @router.get("/models/{name}")
    async def model_page(request: Request, name: ModelName, seen: Viewed) -> HTMLResponse:
        # GET /v1/models' rule: a team reads its own queue's versions
        versions = [v for v in await deps.service().models(name) if may_read_model(seen.principal, v)]
        if not versions:
            return refused(request, seen, f"no model {name!r} you may read", status=404)
        aliases: list[AliasView] = []
        error = None
        try:
            aliases = await model_aliases(state, seen, name, [v.version for v in versions[:VERSIONS_ASKED]])
        except Problem as exc:  # 503: the registry did not answer; the versions are still shown
            error = f"The registry did not answer ({exc.detail or exc.title}): aliases are not shown."
        return render(request, "model.html", seen, name=name, versions=versions, aliases=aliases, error=error)

    @router.get("/models/{name}/compare")
    async def compare_page(
        request: Request,
        name: ModelName,
        seen: Viewed,
        a: Annotated[int, Query(ge=1, le=2**31 - 1)],
        b: Annotated[int, Query(ge=1, le=2**31 - 1)],
    ) -> HTMLResponse:
        try:
            compared = await compare_versions(state, seen.principal, name, a, b)
        except Problem as exc:
            return refused(request, seen, exc.detail or exc.title, status=exc.status)
        return render(
            request, "compare.html", seen, name=name, a=a, b=b, rows=comparison_rows(compared.versions)
        )

    @router.get("/models/{name}/versions/{version}")
    async def version_page(
        request: Request, name: ModelName, version: Annotated[int, Path(ge=1, le=2**31 - 1)], seen: Viewed
    ) -> HTMLResponse:
        # GET /v1/models/{name}/versions/{version}/lineage's answer: the version, then its lineage
        try:
            found = await read_version(state, seen.principal, name, version)
        except Problem as exc:
            return refused(request, seen, exc.detail or exc.title, status=exc.status)
        return render(request, "version.html", seen, name=name, v=found, lineage=ModelLineage.of(found))

    @router.post("/models/{name}/aliases/{alias}/rollback")
    async def rollback(request: Request, name: ModelName, alias: AliasName, seen: Viewed) -> Response:
        try:
            form = await checked_form(request, seen)
        except FormRefused as exc:
            return refused(request, seen, str(exc))
        # the revision the page showed: if the alias moved since, the registry refuses (409)
        shown = str(form.get("revision") or "")
        try:
            await rollback_alias(state, seen.principal, name, alias, int(shown) if shown.isdigit() else None)
        except Forbidden as exc:
            return refused(request, seen, exc.detail, status=403)
        except Problem as exc:
            return refused(request, seen, exc.detail or exc.title, status=exc.status)
        return RedirectResponse(f"/ui/models/{name}", status_code=303)


async def model_aliases(
    state: dict[str, Any], seen: Viewer, name: str, versions: list[int]
) -> list[AliasView]:
    """The aliases the newest ``versions`` hold, each with its history, by name."""

    async def holds(version: int) -> list[str]:
        try:
            return (await read_version(state, seen.principal, name, version)).aliases
        except Problem as exc:
            if exc.status == 404:  # gone from MLflow, or not the viewer's to read
                return []
            raise

    names = sorted({alias for found in await asyncio.gather(*map(holds, versions)) for alias in found})
    views = []
    for alias in names:
        try:
            views.append(await read_alias(state, seen.principal, name, alias))
        except Problem as exc:
            if exc.status != 404:
                raise
    return views


def comparison_rows(versions: list[VersionInfo]) -> list[tuple[str, list[str], bool]]:
    """Rows of the side-by-side table: (what, each version's value, whether they differ)."""
    fields: list[tuple[str, Callable[[VersionInfo], object]]] = [
        ("job", lambda v: v.job_id),
        ("queue", lambda v: v.queue),
        ("git commit", lambda v: (v.git_commit or "")[:12]),
        ("workdir", lambda v: (v.workdir_digest or "")[:12]),
        ("image", lambda v: v.image),
        ("aliases", lambda v: ", ".join(v.aliases)),
        ("registered", lambda v: v.created_at.strftime("%Y-%m-%d %H:%M:%S") if v.created_at else ""),
    ]
    rows = [(label, [str(get(v) or "") for v in versions]) for label, get in fields]
    for key in sorted({k for v in versions for k in v.params}):
        rows.append((f"param {key}", [format_value(v.params.get(key)) for v in versions]))
    for key in sorted({k for v in versions for k in v.metrics}):
        rows.append((f"metric {key}", [format_value(v.metrics.get(key)) for v in versions]))
    return [(label, values, len(set(values)) > 1) for label, values in rows]


def format_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
