"""The UI's routes: thin, as the API's are. Each reads the signed-in principal from the session
cookie, calls what the JSON API calls (``RouteDeps``, the access rules, the service) and renders
a template. Every POST is a form checked for origin and CSRF token (session.py)."""

from __future__ import annotations

import asyncio
import html
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import yaml
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sse_starlette.sse import EventSourceResponse
from starlette.datastructures import FormData

from trainyard_contracts import JobRecord, JobState, SpecError, WhyAnswer, WhyRequest
from trainyard_contracts._time import utcnow
from trainyard_contracts.ids import idempotency_slot
from trainyard_shared.jobindex import IndexQuery, to_ns
from trainyard_submission.access import Forbidden, check_list, mask_values, may_read_model
from trainyard_submission.api import Problem, RouteDeps, forbidden, parse_label_selector
from trainyard_submission.executorlist import list_executors
from trainyard_submission.logs import JobOutput
from trainyard_submission.queuestore import StoredQueue
from trainyard_submission.service import JobAlreadyFinished, JobNotFound
from trainyard_submission.tokens import Principal
from trainyard_submission.ui.livejobs import NewRows, new_rows
from trainyard_submission.ui.paging import Page, PageRequest, cursor_of, parse_cursor
from trainyard_submission.ui.queuestats import executor_allocations, queues_now
from trainyard_submission.ui.session import (
    COOKIE_PATH,
    CSRF_FIELD,
    SESSION_COOKIE,
    SESSION_SECONDS,
    SIGN_IN_COOKIE,
    SessionCookie,
    new_session,
    new_sign_in_nonce,
    nonce_matches,
    parse_session,
    safe_next,
    same_origin,
)
from trainyard_submission.ui.svg import queue_charts

JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
STATES = [s.value for s in JobState]

# no script or style from anywhere else, no framing; the pages hold a CSRF token and a team's data
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class SignInRequired(Exception):
    """No valid session: the page asked for is shown after sign-in."""

    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


async def to_sign_in(request: Request, exc: SignInRequired) -> Response:
    url = "/ui/sign-in?" + urlencode({"next": exc.next_path})
    if request.headers.get("HX-Request"):  # a fragment: htmx follows HX-Redirect, not a 303
        return Response(status_code=401, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


@dataclass(frozen=True)
class Viewer:
    """Who is looking: the token's principal and the session it signed in with."""

    principal: Principal
    session: SessionCookie

    @property
    def csrf(self) -> str:
        return self.session.csrf()

    @property
    def who(self) -> str:
        return "admin" if self.principal.admin else f"team {self.principal.team}"


async def viewer(request: Request) -> Viewer:
    session = parse_session(request.cookies.get(SESSION_COOKIE))
    principal = None
    if session is not None:
        principal = await request.app.state.trainyard["tokens"].authenticate(f"Bearer {session.token}")
    if session is None or principal is None:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(path)
    return Viewer(principal, session)


Viewed = Annotated[Viewer, Depends(viewer)]
# what a route on a job's output answers, given the job, its output and the secret values to mask
OutputAnswer = Callable[[str, JobOutput, list[str]], Awaitable[Response]]


class FormRefused(Exception):
    pass


async def checked_form(request: Request, seen: Viewer) -> FormData:
    """A state-changing form's fields, once its origin and CSRF token are checked."""
    form = await request.form()
    presented = form.get(CSRF_FIELD)
    if not same_origin(request.headers.get("origin"), request.headers.get("host")):
        raise FormRefused("the form came from another site")
    if not seen.session.accepts(presented if isinstance(presented, str) else None):
        raise FormRefused("the form's CSRF token is missing or not this session's")
    return form


def render(
    request: Request, template: str, seen: Viewer | None, status: int = 200, **context: Any
) -> HTMLResponse:
    context.update(viewer=seen, csrf=seen.csrf if seen else "", csrf_field=CSRF_FIELD, states=STATES)
    response = TEMPLATES.TemplateResponse(request, template, context, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def refused(request: Request, seen: Viewer | None, detail: str, status: int = 403) -> HTMLResponse:
    return render(request, "error.html", seen, status=status, title="Refused", detail=detail)


def spec_yaml(record: JobRecord) -> str:
    """The spec as submitted, secrets masked, defaults left out (what a person wrote)."""
    spec = record.spec.redacted().model_dump(mode="json", exclude_defaults=True)
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=100)


def log_lines_html(lines: Iterable[tuple[str, str]]) -> str:
    """One SSE event's fragment: a line each, stderr marked (escaped: a job's output is hostile)."""
    return "".join(f'<span class="line {stream}">{html.escape(text)}\n</span>' for stream, text in lines)


def build_ui_router(state: dict[str, Any]) -> APIRouter:
    deps = RouteDeps(state)
    router = APIRouter(prefix="/ui", include_in_schema=False)
    add_session_routes(router)
    add_job_list_routes(router, deps)
    add_live_job_routes(router, deps)
    add_job_page_routes(router, deps)
    add_job_action_routes(router, deps)
    add_job_output_routes(router, deps)
    add_overview_routes(router, deps)
    return router


def add_session_routes(router: APIRouter) -> None:
    @router.get("")
    async def home() -> RedirectResponse:
        return RedirectResponse("/ui/jobs", status_code=303)

    @router.get("/sign-in")
    async def sign_in_page(request: Request, next: str | None = None) -> HTMLResponse:
        nonce = new_sign_in_nonce()
        response = render(request, "sign_in.html", None, next=safe_next(next), nonce=nonce, error=None)
        set_cookie(request, response, SIGN_IN_COOKIE, nonce, max_age=3600)
        return response

    @router.post("/sign-in")
    async def sign_in(request: Request) -> Response:
        form = await request.form()
        token, nonce, target = (str(form.get(k) or "") for k in ("token", "nonce", "next"))
        target = safe_next(target)
        if not same_origin(request.headers.get("origin"), request.headers.get("host")) or not nonce_matches(
            request.cookies.get(SIGN_IN_COOKIE), nonce
        ):
            return refused(
                request, None, "the sign-in form came from another site, or is stale: sign in again"
            )
        principal = await request.app.state.trainyard["tokens"].authenticate(f"Bearer {token.strip()}")
        if principal is None:
            fresh = new_sign_in_nonce()
            response = render(
                request,
                "sign_in.html",
                None,
                status=401,
                next=target,
                nonce=fresh,
                error="That token is not valid.",
            )
            set_cookie(request, response, SIGN_IN_COOKIE, fresh, max_age=3600)
            return response
        signed_in = RedirectResponse(target, status_code=303)
        session = new_session(token.strip()).value()
        set_cookie(request, signed_in, SESSION_COOKIE, session, max_age=SESSION_SECONDS)
        signed_in.delete_cookie(SIGN_IN_COOKIE, path=COOKIE_PATH)
        return signed_in

    @router.post("/sign-out")
    async def sign_out(request: Request, seen: Viewed) -> Response:
        try:
            await checked_form(request, seen)
        except FormRefused as exc:
            return refused(request, seen, str(exc))
        response = RedirectResponse("/ui/sign-in", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
        return response


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


@dataclass(frozen=True)
class JobFilters:
    """The jobs table's filters, as its page and its live rows are asked for them."""

    state: str | None
    queue: str | None
    name: str | None
    label: str | None

    def query(self, principal: Principal) -> IndexQuery:
        """What the viewer may list of them (a team: its own queue); Problem or Forbidden if not."""
        if self.state is not None and self.state not in STATES:
            raise Problem(422, "invalid state", f"state must be one of {', '.join(STATES)}")
        labels = parse_label_selector((self.label or "").replace(",", " ").split())
        return IndexQuery(check_list(principal, self.queue), self.state, self.name, labels)


def job_filters(
    state: str | None = None,
    queue: Annotated[str | None, Query(max_length=63)] = None,
    name: Annotated[str | None, Query(max_length=63)] = None,
    label: Annotated[str | None, Query(max_length=512)] = None,
) -> JobFilters:
    return JobFilters(state or None, queue or None, name or None, label or None)


Filters = Annotated[JobFilters, Depends(job_filters)]


def readable_by(deps: RouteDeps, seen: Viewer) -> Callable[[str], Awaitable[JobRecord | None]]:
    """A job's record as ``job_for`` lets this viewer read it; None: gone, or not the viewer's."""

    async def readable(job_id: str) -> JobRecord | None:
        try:
            return await deps.job_for(seen.principal, job_id, "read")
        except (Problem, Forbidden):
            return None

    return readable


def viewer_queues(stored: list[StoredQueue], seen: Viewer) -> list[str]:
    """The queues a viewer's filter offers: every queue to an admin, a team's own to the team."""
    names = [q.config.name for q in stored]
    return names if seen.principal.admin else [q for q in names if q == seen.principal.team]


def add_job_list_routes(router: APIRouter, deps: RouteDeps) -> None:
    @router.get("/jobs")
    async def jobs_page(
        request: Request,
        seen: Viewed,
        filters: Filters,
        order: str = "newest",
        cursor: Annotated[str | None, Query(max_length=128)] = None,
        back: bool = False,
        size: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> HTMLResponse:
        wanted = PageRequest(
            state=filters.state,
            queue=filters.queue,
            name=filters.name,
            label=filters.label,
            oldest_first=order == "oldest",
            cursor=cursor or None,
            back=back,
            size=size,
        )
        # the queue filter's choices are read while the page's rows are, not before them
        queues_read = asyncio.create_task(deps.queues().list())
        try:
            query = filters.query(seen.principal)
            past = parse_cursor(wanted.cursor)
            # the first page, newest first, streams its new rows from the index as it was read
            index = deps.state["service"].index
            since = (await index.js.stream_info(index.stream)).state.last_seq if wanted.live else None
            rows = await deps.service().list(
                query.state,
                query.queue,
                wanted.size + 1,
                name=query.name,
                labels=query.labels,
                oldest_first=wanted.oldest_first != wanted.back,
                past=past,
            )
        except Forbidden as exc:
            queues = viewer_queues(await queues_read, seen)
            return JobsView(wanted, queues, error=forbidden(exc).detail).render(request, seen, 403)
        except Problem as exc:
            queues = viewer_queues(await queues_read, seen)
            return JobsView(wanted, queues, error=exc.detail or exc.title).render(request, seen, exc.status)
        except BaseException:
            queues_read.cancel()
            raise
        queues = viewer_queues(await queues_read, seen)
        page = Page.of(wanted, rows)
        live = wanted.live_url(since, cursor_of(page.rows[0]) if page.rows else None) if wanted.live else None
        return JobsView(wanted, queues, page=page, live_url=live).render(request, seen)


def add_live_job_routes(router: APIRouter, deps: RouteDeps) -> None:
    """The jobs table's live parts: new rows as server-sent events, unfinished rows refreshed."""

    @router.get("/jobs/live")
    async def live_new_rows(
        request: Request,
        seen: Viewed,
        filters: Filters,
        since: Annotated[int | None, Query(ge=0)] = None,
        top: Annotated[str | None, Query(max_length=128)] = None,
    ) -> Response:
        """The first page's new rows, as server-sent events (livejobs.py): every row added so far
        in each event, each job read as ``job_for`` allows it."""
        try:
            query = filters.query(seen.principal)
            past = parse_cursor(top or None)
        except Forbidden as exc:
            return refused(request, seen, forbidden(exc).detail)
        except Problem as exc:
            return refused(request, seen, exc.detail or exc.title, status=exc.status)
        rows = NewRows(query, (to_ns(past[0]), past[1]) if past else None)

        async def events() -> AsyncIterator[dict[str, str]]:
            template = TEMPLATES.get_template("_jobs_new.html")
            async for added in new_rows(deps.state["service"].index, rows, since, readable_by(deps, seen)):
                yield {"event": "rows", "data": template.render(rows=added, more=rows.more)}

        return EventSourceResponse(events(), ping=15, headers={"Cache-Control": "no-store"})

    @router.get("/jobs/rows")
    async def live_rows(
        request: Request, seen: Viewed, ids: Annotated[str, Query(max_length=20_000)] = ""
    ) -> HTMLResponse:
        """The table's rows of jobs that had not ended, as they are now (swapped in out of band),
        and the poller again for those still not ended; each row as ``job_for`` allows it."""
        wanted = [i for i in dict.fromkeys(ids.split(",")) if JOB_ID.fullmatch(i)][:500]
        # a job gone, or not this viewer's: its row stays as it was
        rows = [r for r in await asyncio.gather(*map(readable_by(deps, seen), wanted)) if r is not None]
        live = [r.job_id for r in rows if not r.state.terminal]
        return render(request, "_jobs_rows.html", seen, rows=rows, live=live)


@dataclass(frozen=True)
class JobsView:
    """What the jobs page shows: the request as read, the queues its filter offers, and a page of
    rows with its live URL, or the error that stands in their place."""

    wanted: PageRequest
    queues: list[str]
    page: Page | None = None
    error: str | None = None
    live_url: str | None = None

    def render(self, request: Request, seen: Viewer, status: int = 200) -> HTMLResponse:
        return render(request, "jobs.html", seen, status=status, **vars(self))


async def job_or_refusal(
    deps: RouteDeps, request: Request, seen: Viewer, job_id: str, action: str = "read"
) -> JobRecord | HTMLResponse:
    """The job if this viewer may ``action`` it (the API's own lookup and access rule), else the
    page that says why not."""
    try:
        return await deps.job_for(seen.principal, job_id, action)
    except Problem as exc:
        return refused(request, seen, exc.detail or exc.title, status=exc.status)
    except Forbidden as exc:
        return refused(request, seen, exc.detail, status=403)


def add_job_page_routes(router: APIRouter, deps: RouteDeps) -> None:
    @router.get("/jobs/{job_id}")
    async def job_page(request: Request, job_id: str, seen: Viewed) -> HTMLResponse:
        record = await job_or_refusal(deps, request, seen, job_id)
        if isinstance(record, HTMLResponse):
            return record
        return render(
            request,
            "job.html",
            seen,
            job=record,
            spec=spec_yaml(record),
            resubmit_nonce=secrets.token_urlsafe(12),
            may_resubmit=not record.secrets_stored,
        )

    @router.get("/jobs/{job_id}/summary")
    async def job_summary(request: Request, job_id: str, seen: Viewed) -> HTMLResponse:
        record = await job_or_refusal(deps, request, seen, job_id)
        if isinstance(record, HTMLResponse):
            return record
        return render(request, "_job_summary.html", seen, job=record)

    @router.get("/jobs/{job_id}/why")
    async def job_why(request: Request, job_id: str, seen: Viewed) -> HTMLResponse:
        record = await job_or_refusal(deps, request, seen, job_id)
        if isinstance(record, HTMLResponse):
            return record
        why: WhyAnswer | None = None
        error = None
        try:
            answer = await deps.ask_scheduler(deps.state["subjects"].scheduler_why, WhyRequest(job_id=job_id))
            why = WhyAnswer.model_validate_json(answer)
        except Problem as exc:  # 503: no scheduler leader answered
            error = f"The scheduler did not answer ({exc.detail}); asked again every 5 s."
        return render(request, "_why.html", seen, job=record, why=why, error=error)


def add_job_action_routes(router: APIRouter, deps: RouteDeps) -> None:
    @router.post("/jobs/{job_id}/cancel")
    async def cancel(request: Request, job_id: str, seen: Viewed) -> Response:
        try:
            await checked_form(request, seen)
        except FormRefused as exc:
            return refused(request, seen, str(exc))
        record = await job_or_refusal(deps, request, seen, job_id, "cancel")
        if isinstance(record, HTMLResponse):
            return record
        try:
            cancelled = await deps.service().cancel(job_id, by=seen.principal.name)
            after = {"state": cancelled.state.value}
            await deps.audit(seen.principal, "job.cancel", f"job:{job_id}", after, detail="web UI")
        except JobNotFound:
            return refused(request, seen, f"no such job: {job_id}", status=404)
        except JobAlreadyFinished:
            pass  # it ended meanwhile: its page says how
        return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)

    @router.post("/jobs/{job_id}/resubmit")
    async def resubmit(request: Request, job_id: str, seen: Viewed) -> Response:
        try:
            form = await checked_form(request, seen)
        except FormRefused as exc:
            return refused(request, seen, str(exc))
        record = await job_or_refusal(deps, request, seen, job_id)
        if isinstance(record, HTMLResponse):
            return record
        if record.secrets_stored:
            detail = "this job's spec holds secrets the UI does not show: submit it again with the CLI"
            return refused(request, seen, detail, status=409)
        # one job per rendered form: a double click or a reload of the POST makes no second job
        slot = idempotency_slot(f"ui.{seen.principal.token_id}", f"{job_id}:{form.get('nonce')}")
        try:
            submitted = await deps.service().submit(
                spec_yaml(record),
                submitted_by=seen.principal.name,
                idempotency_slot=slot,
                principal=seen.principal,
            )
        except (SpecError, Forbidden) as exc:
            return refused(request, seen, str(exc), status=422)
        return RedirectResponse(f"/ui/jobs/{submitted.job_id}", status_code=303)


def add_job_output_routes(router: APIRouter, deps: RouteDeps) -> None:
    def add_output_route(path: str, answer: OutputAnswer) -> None:
        """A route on a job's output: the job page's refusal if this viewer may not read the job,
        else ``answer`` with the output and the secret values it is masked of."""

        async def route(request: Request, job_id: str, seen: Viewed) -> Response:
            record = await job_or_refusal(deps, request, seen, job_id)
            if isinstance(record, HTMLResponse):
                return record
            # a job that prints its own secret: the page does not pass the value on, as the API does not
            secrets_ = await deps.service().secrets.values(record)
            output = JobOutput(deps.service(), deps.state["js"], deps.state["subjects"], record)
            return await answer(job_id, output, secrets_)

        router.add_api_route(path, route, methods=["GET"], name=answer.__name__)

    async def logs_text(job_id: str, output: JobOutput, secrets_: list[str]) -> Response:
        lines = [
            mask_values(line.text, secrets_)
            async for chunk in output.chunks(None, False)
            for line in chunk.lines
        ]
        headers = {"Content-Disposition": f'attachment; filename="{job_id}.log"', **SECURITY_HEADERS}
        return PlainTextResponse("\n".join(lines) + ("\n" if lines else ""), headers=headers)

    async def logs_stream(job_id: str, output: JobOutput, secrets_: list[str]) -> Response:
        async def events() -> AsyncIterator[dict[str, str]]:
            # the pane is emptied first (a comment: an event without data is not dispatched), so
            # that the extension's reconnect after a dropped connection replays, not doubles
            yield {"event": "reset", "data": "<!-- output from the start -->"}
            async for chunk in output.chunks(None, True):
                lines = [(line.stream, mask_values(line.text, secrets_)) for line in chunk.lines]
                yield {"event": "log", "data": log_lines_html(lines)}
            ended = html.escape(output.end_state())
            yield {"event": "end", "data": f'<p class="ended">The job ended: <strong>{ended}</strong>.</p>'}

        return EventSourceResponse(events(), ping=15, headers={"Cache-Control": "no-store"})

    add_output_route("/jobs/{job_id}/logs.txt", logs_text)
    add_output_route("/jobs/{job_id}/logs/stream", logs_stream)


def add_overview_routes(router: APIRouter, deps: RouteDeps) -> None:
    async def queues_now_view(seen: Viewer) -> dict[str, Any]:
        queues = [q.as_json() for q in await deps.queues().list()]
        service = deps.state["service"]
        now = await queues_now(service.index, service.store, [str(q["name"]) for q in queues])
        # what waits and runs in a queue is its team's, as the jobs table is: a team sees its own
        mine = [str(q["name"]) for q in queues if seen.principal.admin or q["name"] == seen.principal.team]
        sampler = deps.state.get("queue_sampler")
        charts = {name: queue_charts(name, sampler.history.of(name) if sampler else []) for name in mine}
        return {"queues": queues, "now": now, "mine": mine, "charts": charts, "at": utcnow()}

    @router.get("/queues")
    async def queues_page(request: Request, seen: Viewed) -> HTMLResponse:
        return render(request, "queues.html", seen, **await queues_now_view(seen))

    @router.get("/queues/now")
    async def queues_now_part(request: Request, seen: Viewed) -> HTMLResponse:
        """The queues page's numbers and charts as they are now (the page asks every 5 s)."""
        return render(request, "_queues_now.html", seen, **await queues_now_view(seen))

    @router.get("/models")
    async def models_page(
        request: Request, seen: Viewed, name: Annotated[str | None, Query(max_length=128)] = None
    ) -> HTMLResponse:
        # GET /v1/models' rule: a team reads its own queue's versions
        versions = [v for v in await deps.service().models(name or None) if may_read_model(seen.principal, v)]
        return render(request, "models.html", seen, versions=versions, name=name or "")

    @router.get("/executors")
    async def executors_page(request: Request, seen: Viewed) -> HTMLResponse:
        now = utcnow()
        executors = await list_executors(deps.state["executors_reader"], now)
        held = await executor_allocations(deps.state["executors_reader"], deps.state["service"].store)
        return render(request, "executors.html", seen, executors=executors, now=now, held=held)


def when(value: datetime | str | None) -> str:
    """A time as the pages show it: UTC, to the second."""
    if value is None:
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def number(value: float | int | None) -> str:
    """A quantity without a needless ``.0`` (quotas and capacities are floats in the models)."""
    if value is None:
        return "∞"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


TEMPLATES.env.filters["when"] = when
TEMPLATES.env.filters["number"] = number
