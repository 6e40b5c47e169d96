"""The HTTP API: thin routes that translate a request into a SubmissionService call.

Every error is an RFC 9457 problem document; every /v1 route needs a bearer token (see tokens.py
for the token model and access.py for who may do what).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException

from trainyard_contracts import (
    DryRunAnswer,
    DryRunRequest,
    FieldError,
    JobRecord,
    JobSpec,
    JobState,
    SpecError,
    WhyAnswer,
    WhyRequest,
)
from trainyard_contracts._time import utcnow
from trainyard_contracts.audit import AuditEntry
from trainyard_contracts.ids import idempotency_slot
from trainyard_contracts.spec import DIGEST_PATTERN, QUEUE_PATTERN, capped_errors
from trainyard_submission.access import (
    Forbidden,
    QueueRefused,
    check_admin,
    check_job,
    check_list,
    mask_values,
    may_read_model,
    public_record,
)
from trainyard_submission.arrayjobs import array_request
from trainyard_submission.deadletters import DeadLetters, LetterNotFound
from trainyard_submission.executorlist import list_executors
from trainyard_submission.logs import JobOutput
from trainyard_submission.purge import JobNotFinished, JobPurger
from trainyard_submission.queuestore import QueueStore
from trainyard_submission.samespec import IdempotencyConflict
from trainyard_submission.service import (
    JobAlreadyFinished,
    JobNotFound,
    SubmissionService,
)
from trainyard_submission.tokens import Principal, TokenStore
from trainyard_submission.workdirs import WorkdirRefused, WorkdirStore

PROBLEM = "application/problem+json"
log = logging.getLogger("trainyard.submission.api")
audit_log = logging.getLogger("trainyard.submission.audit")


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str = "", **extra: Any) -> None:
        self.status, self.title, self.detail, self.extra = status, title, detail, extra


@contextmanager
def refusals_as_problems(what: str = "job spec") -> Iterator[None]:
    """A queue's refusal is 403 and an invalid ``what`` 422, each with its field errors."""
    try:
        yield
    except QueueRefused as exc:
        errors = [e.model_dump() for e in exc.errors]
        raise Problem(403, "forbidden", exc.detail, queue=exc.queue, errors=errors) from exc
    except SpecError as exc:
        errors = [e.model_dump() for e in exc.errors]
        raise Problem(422, f"invalid {what}", str(exc), errors=errors) from exc


def problem_response(status: int, title: str, detail: str = "", **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


CURSOR_SEPARATOR = "~"


def cursor_of(record: JobRecord) -> str:
    """A page boundary: opaque to clients (the row's submission time and job id)."""
    return f"{record.submitted_at.isoformat()}{CURSOR_SEPARATOR}{record.job_id}"


def parse_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    if cursor is None:
        return None
    at, sep, job_id = cursor.rpartition(CURSOR_SEPARATOR)
    try:
        if not sep or not job_id:
            raise ValueError(cursor)
        return datetime.fromisoformat(at), job_id
    except ValueError as exc:
        raise Problem(422, "invalid page", "the page link is malformed: start from the first page") from exc


def summary(record: JobRecord) -> dict[str, Any]:
    return {
        "job_id": record.job_id,
        "name": record.spec.name,
        "queue": record.spec.queue,
        "labels": record.spec.labels,
        "state": record.state.value,
        "attempt": record.attempt,
        "executor_id": record.executor_id,
        "submitted_at": record.submitted_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
        "exit_code": record.exit_code,
        "reason": record.reason,
        "model": record.model.model_dump(mode="json") if record.model else None,
    }


def parse_label_selector(selectors: list[str]) -> dict[str, str]:
    """``["sweep=lr", "team=a"]`` as a mapping; a selector without ``=`` is a 422 naming it."""
    labels = {}
    for selector in selectors:
        key, eq, value = selector.partition("=")
        if not eq or not key:
            raise Problem(
                422,
                "invalid label selector",
                f"label {selector!r}: expected key=value",
                errors=[{"field": "label", "message": f"{selector!r} is not key=value"}],
            )
        labels[key.strip()] = value.strip()
    return labels


def forbidden(exc: Forbidden) -> Problem:
    extra: dict[str, Any] = {"queue": exc.queue} if exc.queue else {}
    if exc.errors:
        extra["errors"] = [e.model_dump() for e in exc.errors]
    return Problem(403, "forbidden", exc.detail, **extra)


def install_openapi(app: FastAPI) -> None:
    """Describe POST /v1/jobs' body (read raw, as YAML or JSON) and the bearer scheme."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        spec_schema = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {}).update(spec_schema.pop("$defs", {}))
        components["schemas"]["JobSpec"] = spec_schema
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
        post = schema["paths"]["/v1/jobs"]["post"]
        ref = {"$ref": "#/components/schemas/JobSpec"}
        post["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref}, "application/yaml": {"schema": ref}},
        }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.title, exc.detail, **exc.extra)

    @app.exception_handler(Forbidden)
    async def _forbidden(_: Request, exc: Forbidden) -> JSONResponse:
        p = forbidden(exc)
        return problem_response(p.status, p.title, p.detail, **p.extra)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return problem_response(exc.status_code, str(exc.detail))

    @app.exception_handler(TimeoutError)  # nats-py's timeouts are TimeoutErrors too
    async def _broker_slow(_: Request, exc: TimeoutError) -> JSONResponse:
        # overload or a broker away: say so, and how to retry safely (the write may have landed)
        log.warning("a request timed out waiting for NATS", extra={"error": type(exc).__name__})
        response = problem_response(
            503,
            "broker did not answer in time",
            "retry in a moment; send the same Idempotency-Key so a job that was created is not created twice",
        )
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # still one format; the details go to the log, never to the caller
        log.exception("unhandled error in a request", exc_info=exc)
        return problem_response(
            500, "internal error", "the error is logged; the request changed nothing or may be retried"
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        raw = exc.errors()
        shown = (FieldError(field=".".join(str(p) for p in e["loc"]), message=e["msg"]) for e in raw)
        errors = [e.model_dump() for e in capped_errors(shown, total=len(raw))]
        return problem_response(422, "invalid request", "see errors", errors=errors)


async def authorised(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    tokens: TokenStore = request.app.state.trainyard["tokens"]
    principal = await tokens.authenticate(authorization)
    if principal is None:
        raise Problem(401, "unauthorised", "send a valid API token as 'Authorization: Bearer ...'")
    return principal


Caller = Annotated[Principal, Depends(authorised)]


async def admin(caller: Caller, request: Request) -> Principal:
    check_admin(caller, f"{request.method} {request.url.path}")
    return caller


Admin = Annotated[Principal, Depends(admin)]
WorkdirDigest = Annotated[
    str, Path(pattern=DIGEST_PATTERN, description="sha256:<64 lowercase hex digits> of the packed workdir")
]
QueuePath = Annotated[str, Path(pattern=QUEUE_PATTERN, description="the queue's name")]
IfMatch = Annotated[
    int | None, Header(alias="If-Match", ge=0, description="the revision to replace (0: must not exist)")
]


class RouteDeps:
    """What the routes reach once the app has started: the lifespan fills ``state``."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def service(self) -> SubmissionService:
        return self.state["service"]  # type: ignore[no-any-return]

    def queues(self) -> QueueStore:
        return self.state["queues"]  # type: ignore[no-any-return]

    def tokens(self) -> TokenStore:
        return self.state["tokens"]  # type: ignore[no-any-return]

    def workdirs(self) -> WorkdirStore:
        return self.state["workdirs"]  # type: ignore[no-any-return]

    async def audit(
        self,
        caller: Principal,
        action: str,
        target: str,
        after: dict[str, Any] | None = None,
        detail: str = "",
    ) -> None:
        """An entry on the audit stream for a change just made (docs/models.md, "The audit stream").
        The change stands if the entry cannot be appended: that is logged with the entry instead."""
        entry = AuditEntry(
            service="submission",
            action=action,
            actor=caller.name,
            token_id=caller.token_id,
            team=caller.team,
            admin=caller.admin,
            target=target,
            after=after,
            detail=detail,
        )
        try:
            await self.state["audit"].append(entry)
        except Exception:
            audit_log.exception("audit entry not appended", extra={"entry": entry.model_dump(mode="json")})

    async def job_for(self, caller: Principal, job_id: str, action: str) -> JobRecord:
        try:
            record = await self.service().get(job_id)
        except JobNotFound as exc:
            raise Problem(404, "no such job", job_id) from exc
        check_job(caller, record, action)
        return record

    async def read_body(self, request: Request, limit: int | None = None, what: str = "a job spec") -> bytes:
        limit = limit or self.state["settings"].max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise Problem(413, "body too large", f"{what} is at most {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise Problem(413, "body too large", f"{what} is at most {limit} bytes")
        return b"".join(chunks)

    async def ask_scheduler(self, subject: str, request: BaseModel) -> bytes:
        """A question for the scheduler leader (request/reply); 503 when no leader answers."""
        try:
            reply = await self.state["broker"].request(
                request.model_dump_json().encode(),
                subject,
                timeout=self.state["settings"].scheduler_timeout_seconds,
            )
        except Exception as exc:  # no responder / timeout: no scheduler leader right now
            raise Problem(
                503, "scheduler unavailable", f"no scheduler leader answered: {type(exc).__name__}"
            ) from exc
        return bytes(reply.body)


async def ask_service(
    state: dict[str, Any], subject: str, payload: bytes, timeout: float, service: str
) -> bytes:
    """Another service's answer on ``subject`` (request/reply); no answer in time is a 503."""
    try:
        reply = await state["broker"].request(payload, subject, timeout=timeout)
    except Exception as exc:  # no responder / timeout
        raise Problem(
            503, f"{service} unavailable", f"the {service} service did not answer: {type(exc).__name__}"
        ) from exc
    return bytes(reply.body)


def build_router(state: dict[str, Any]) -> APIRouter:
    """``state`` holds the service, settings and token once the app has started."""
    deps = RouteDeps(state)
    router = APIRouter(prefix="/v1", dependencies=[Depends(authorised)])
    for add in (
        add_workdir_routes,
        add_submit_routes,
        add_job_routes,
        add_log_routes,
        add_read_routes,
    ):
        add(router, deps)
    return router


def add_workdir_routes(router: APIRouter, deps: RouteDeps) -> None:
    """Packed workdirs: stored once under their digest."""

    @router.head("/workdirs/{digest}", summary="204 when this packed workdir is stored, else 404")
    async def workdir_stored(digest: WorkdirDigest) -> Response:
        return Response(status_code=204 if await deps.workdirs().exists(digest) else 404)

    @router.put("/workdirs/{digest}", summary="store a packed workdir under its sha256 (idempotent)")
    async def upload_workdir(digest: WorkdirDigest, request: Request) -> JSONResponse:
        limit = deps.workdirs().limits.max_archive_bytes
        body = await deps.read_body(request, limit, "a packed workdir")
        try:
            stored = await deps.workdirs().upload(digest, body)
        except WorkdirRefused as exc:
            raise Problem(exc.status, "workdir refused", str(exc), digest=digest) from exc
        return JSONResponse({"digest": digest, "stored": stored}, status_code=201 if stored else 200)


def add_submit_routes(router: APIRouter, deps: RouteDeps) -> None:
    """Submitting, and asking the scheduler about a spec or a job."""

    @router.post("/jobs", status_code=201, summary="submit a job spec (JSON or YAML)")
    async def submit(
        request: Request,
        caller: Caller,
        idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
    ) -> JSONResponse:
        body = await deps.read_body(request)
        # idempotency keys are per principal: one team cannot learn another's job through a key
        slot = idempotency_slot(f"http.{caller.token_id}", idempotency_key) if idempotency_key else None
        try:
            with refusals_as_problems():
                array = array_request(body)  # a caller's array_task is refused here
                if array is not None:  # the workflow service makes the array's jobs, not this route
                    return await deps.state["submit_array"](caller, array)  # type: ignore[no-any-return]
                result = await deps.service().submit(
                    body, submitted_by=caller.name, idempotency_slot=slot, principal=caller
                )
        except IdempotencyConflict as exc:
            raise Problem(
                409, "idempotency key reused", str(exc), job_id=exc.job_id, differs=exc.differs
            ) from exc
        return JSONResponse(
            {
                "job_id": result.job_id,
                "state": result.record.state.value,
                "duplicate": result.duplicate,
                "job": public_record(result.record),
            },
            status_code=200 if result.duplicate else 201,
        )

    @router.post("/jobs/dry-run", summary="what the scheduler would decide now for a spec; nothing is queued")
    async def dry_run(request: Request, caller: Caller) -> JSONResponse:
        body = await deps.read_body(request)
        with refusals_as_problems():
            spec = await deps.service().admissible(body, caller)
        answer = await deps.ask_scheduler(deps.state["subjects"].scheduler_dry_run, DryRunRequest(spec=spec))
        return JSONResponse(DryRunAnswer.model_validate_json(answer).model_dump(mode="json"))

    @router.get("/jobs/{job_id}/why", summary="why a job is still pending (the scheduler leader's answer)")
    async def why(job_id: str, caller: Caller) -> JSONResponse:
        await deps.job_for(caller, job_id, "read")
        answer = await deps.ask_scheduler(deps.state["subjects"].scheduler_why, WhyRequest(job_id=job_id))
        return JSONResponse(WhyAnswer.model_validate_json(answer).model_dump(mode="json"))


def add_job_routes(router: APIRouter, deps: RouteDeps) -> None:
    """Listing, reading, cancelling and purging jobs."""

    @router.get("/jobs", summary="list jobs, newest first")
    async def list_jobs(
        caller: Caller,
        state_: Annotated[JobState | None, Query(alias="state")] = None,
        queue: Annotated[str | None, Query(max_length=63)] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        name: Annotated[str | None, Query(max_length=63)] = None,
        label: Annotated[
            list[str] | None, Query(max_length=16, description="key=value; a job must carry every one")
        ] = None,
        order: Annotated[Literal["newest", "oldest"], Query(description="by submission time")] = "newest",
        cursor: Annotated[
            str | None,
            Query(max_length=128, description="the previous page's next_cursor: the rows after it"),
        ] = None,
    ) -> dict[str, Any]:
        queue = check_list(caller, queue)
        labels = parse_label_selector(label or [])
        rows = await deps.service().list(
            state_.value if state_ else None,
            queue,
            limit,
            name=name,
            labels=labels,
            oldest_first=order == "oldest",
            past=parse_cursor(cursor),
        )
        # a full page may have a next one: its cursor; fewer rows than asked: the last page
        next_cursor = cursor_of(rows[-1]) if rows and len(rows) == limit else None
        return {"jobs": [summary(r) for r in rows], "next_cursor": next_cursor}

    @router.get("/jobs/{job_id}", summary="one job's record")
    async def get_job(job_id: str, caller: Caller) -> JSONResponse:
        record = await deps.job_for(caller, job_id, "read")
        return JSONResponse(public_record(record))

    @router.post("/jobs/{job_id}/cancel", status_code=202, summary="request cancellation")
    async def cancel_job(job_id: str, caller: Caller) -> JSONResponse:
        await deps.job_for(caller, job_id, "cancel")
        try:
            record = await deps.service().cancel(job_id, by=caller.name)
        except JobNotFound as exc:
            raise Problem(404, "no such job", job_id) from exc
        except JobAlreadyFinished as exc:
            raise Problem(409, "job already finished", str(exc)) from exc
        await deps.audit(caller, "job.cancel", f"job:{job_id}", {"state": record.state.value})
        return JSONResponse(public_record(record), status_code=202)

    @router.delete("/jobs/{job_id}", summary="purge a finished job: record and history, secrets, logs")
    async def purge_job(job_id: str, caller: Caller, purge: bool = False) -> dict[str, Any]:
        if not purge:
            detail = "DELETE removes a finished job and all that is stored of it; say purge=true"
            errors = [{"field": "purge", "message": "must be true (to stop a job: POST .../cancel)"}]
            raise Problem(400, "purge=true required", detail, errors=errors)
        record = await deps.job_for(caller, job_id, "purge")
        try:
            purger: JobPurger = deps.state["purger"]
            purged = await purger.purge(record, caller.name)
        except JobNotFinished as exc:
            raise Problem(409, "job not finished", str(exc)) from exc
        await deps.audit(caller, "job.purge", f"job:{job_id}", purged.as_json()["purged"])  # type: ignore[arg-type]
        return purged.as_json()


def add_log_routes(router: APIRouter, deps: RouteDeps) -> None:
    """A job's output and its reported metrics, once or followed (server-sent events)."""

    @router.get("/jobs/{job_id}/logs", summary="the job's output; follow=true streams SSE")
    async def job_logs(
        job_id: str,
        caller: Caller,
        attempt: Annotated[int | None, Query(ge=1)] = None,
        follow: bool = False,
    ) -> Any:
        record = await deps.job_for(caller, job_id, "read the logs of")
        # a job that prints its own secret: the API does not pass the value on
        secrets = await deps.service().secrets.values(record)
        output = JobOutput(deps.service(), deps.state["js"], deps.state["subjects"], record)
        chunks = output.chunks(attempt, follow)
        if not follow:
            lines = [mask_values(line.text, secrets) async for chunk in chunks for line in chunk.lines]
            return PlainTextResponse("\n".join(lines) + ("\n" if lines else ""))

        async def events() -> AsyncIterator[dict[str, str]]:
            async for chunk in chunks:
                for line in chunk.lines:
                    data = {
                        "attempt": chunk.attempt,
                        "stream": line.stream,
                        "text": mask_values(line.text, secrets),
                        "time": line.time.isoformat(),
                    }
                    yield {"event": "log", "data": json.dumps(data)}
            yield {"event": "end", "data": output.end_state()}

        return EventSourceResponse(events(), ping=15)

    @router.get(
        "/jobs/{job_id}/metrics",
        summary="what the job reported with trainyard.report: its last points; follow=true streams SSE",
    )
    async def job_metrics(
        job_id: str,
        caller: Caller,
        attempt: Annotated[int | None, Query(ge=1)] = None,
        follow: bool = False,
        last: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
        latest: bool = False,
    ) -> Any:
        record = await deps.job_for(caller, job_id, "read the metrics of")
        output = JobOutput(deps.service(), deps.state["js"], deps.state["subjects"], record)
        # latest=true: only the newest batch is read (trainyard top asks this of every running job)
        batches = output.metric_batches(attempt, follow, latest)
        if not follow:
            # the newest ``last`` points in memory, however many the stream holds
            points: deque[dict[str, Any]] = deque(maxlen=last)
            dropped: dict[int, int] = {}
            total = 0
            async for batch in batches:
                dropped[batch.attempt] = max(dropped.get(batch.attempt, 0), batch.dropped)
                total += len(batch.points)
                points.extend({"attempt": batch.attempt, **p.model_dump()} for p in batch.points)
            return {
                "job_id": job_id,
                "state": record.state.value,
                "points": list(points),
                "total": total,
                "dropped": sum(dropped.values()),
            }

        async def events() -> AsyncIterator[dict[str, str]]:
            async for batch in batches:
                yield {"event": "metrics", "data": batch.model_dump_json()}
            yield {"event": "end", "data": output.end_state()}

        return EventSourceResponse(events(), ping=15)


def add_read_routes(router: APIRouter, deps: RouteDeps) -> None:
    """Dead letters, models and executors."""

    @router.get("/dlq", summary="dead letters: messages a service could not handle, and why")
    async def dead_letters(
        _: Admin,
        service: Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9_-]{0,62}$")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        letters = await DeadLetters(deps.state["js"], deps.state["subjects"]).list(service, limit)
        return {"letters": [letter.as_json() for letter in letters]}

    @router.post("/dlq/{seq}/replay", summary="publish a dead letter again on its subject")
    async def replay_dead_letter(_: Admin, seq: Annotated[int, Path(ge=1, le=2**63 - 1)]) -> dict[str, Any]:
        try:
            letter = await DeadLetters(deps.state["js"], deps.state["subjects"]).replay(seq)
        except LetterNotFound as exc:
            raise Problem(404, "no such dead letter", str(seq)) from exc
        return {"replayed": letter.as_json()}

    @router.get("/models", summary="registered model versions, newest first")
    async def models(
        caller: Caller, name: Annotated[str | None, Query(max_length=128)] = None
    ) -> dict[str, Any]:
        versions = [v for v in await deps.service().models(name) if may_read_model(caller, v)]
        return {"models": [v.model_dump(mode="json") for v in versions]}

    @router.get("/executors", summary="executors: capacity, lease, running count, what they isolate")
    async def executors() -> dict[str, Any]:
        return {"executors": await list_executors(deps.state["executors_reader"], utcnow())}
