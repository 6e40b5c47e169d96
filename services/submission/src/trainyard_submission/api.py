"""The HTTP API: thin routes that translate a request into a SubmissionService call.

Every error is an RFC 9457 problem document; every /v1 route needs the bearer token.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException

from trainyard_contracts import JobRecord, JobState, SpecError
from trainyard_submission.auth import token_matches
from trainyard_submission.deadletters import DeadLetters, LetterNotFound
from trainyard_submission.logs import read_chunks
from trainyard_submission.service import (
    JobAlreadyFinished,
    JobNotFound,
    SubmissionService,
    idempotency_slot,
)

PROBLEM = "application/problem+json"


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str = "", **extra: Any) -> None:
        self.status, self.title, self.detail, self.extra = status, title, detail, extra


def problem_response(status: int, title: str, detail: str = "", **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def summary(record: JobRecord) -> dict[str, Any]:
    return {
        "job_id": record.job_id,
        "name": record.spec.name,
        "queue": record.spec.queue,
        "state": record.state.value,
        "attempt": record.attempt,
        "executor_id": record.executor_id,
        "submitted_at": record.submitted_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
        "exit_code": record.exit_code,
        "reason": record.reason,
        "model": record.model.model_dump(mode="json") if record.model else None,
    }


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.title, exc.detail, **exc.extra)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return problem_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        return problem_response(422, "invalid request", "see errors", errors=errors)


def build_router(state: dict[str, Any]) -> APIRouter:
    """``state`` holds the service, settings and token once the app has started."""

    def service() -> SubmissionService:
        return state["service"]  # type: ignore[no-any-return]

    async def authorised(authorization: Annotated[str | None, Header()] = None) -> str:
        if not token_matches(state["token"], authorization):
            raise Problem(401, "unauthorised", "send the API token as 'Authorization: Bearer ...'")
        return "api"

    router = APIRouter(prefix="/v1", dependencies=[Depends(authorised)])

    async def read_body(request: Request) -> bytes:
        limit = state["settings"].max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise Problem(413, "body too large", f"a job spec is at most {limit} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise Problem(413, "body too large", f"a job spec is at most {limit} bytes")
        return body

    @router.post("/jobs", status_code=201, summary="submit a job spec (JSON or YAML)")
    async def submit(
        request: Request,
        idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
    ) -> JSONResponse:
        body = await read_body(request)
        slot = idempotency_slot("http", idempotency_key) if idempotency_key else None
        try:
            result = await service().submit(body, submitted_by="api", idempotency_slot=slot)
        except SpecError as exc:
            errors = [e.model_dump() for e in exc.errors]
            raise Problem(422, "invalid job spec", str(exc), errors=errors) from exc
        return JSONResponse(
            {
                "job_id": result.job_id,
                "state": result.record.state.value,
                "duplicate": result.duplicate,
                "job": result.record.model_dump(mode="json"),
            },
            status_code=200 if result.duplicate else 201,
        )

    @router.get("/jobs", summary="list jobs, newest first")
    async def list_jobs(
        state_: Annotated[JobState | None, Query(alias="state")] = None,
        queue: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> dict[str, Any]:
        rows = service().list(state_.value if state_ else None, queue, limit)
        return {"jobs": [summary(r) for r in rows]}

    @router.get("/jobs/{job_id}", summary="one job's record")
    async def get_job(job_id: str) -> JSONResponse:
        try:
            record = await service().get(job_id)
        except JobNotFound as exc:
            raise Problem(404, "no such job", job_id) from exc
        return JSONResponse(record.model_dump(mode="json"))

    @router.post("/jobs/{job_id}/cancel", status_code=202, summary="request cancellation")
    async def cancel_job(job_id: str) -> JSONResponse:
        try:
            record = await service().cancel(job_id, by="api")
        except JobNotFound as exc:
            raise Problem(404, "no such job", job_id) from exc
        except JobAlreadyFinished as exc:
            raise Problem(409, "job already finished", str(exc)) from exc
        return JSONResponse(record.model_dump(mode="json"), status_code=202)

    @router.get("/jobs/{job_id}/logs", summary="the job's output; follow=true streams SSE")
    async def job_logs(
        job_id: str,
        attempt: Annotated[int | None, Query(ge=1)] = None,
        follow: bool = False,
    ) -> Any:
        try:
            await service().get(job_id)
        except JobNotFound as exc:
            raise Problem(404, "no such job", job_id) from exc
        js, subjects = state["js"], state["subjects"]

        def finished() -> bool:
            record = service().view.get(job_id)
            return record is not None and record.state.terminal

        chunks = read_chunks(js, subjects, job_id, attempt, follow, finished)
        if not follow:
            lines = [line.text async for chunk in chunks for line in chunk.lines]
            return PlainTextResponse("\n".join(lines) + ("\n" if lines else ""))

        async def events() -> AsyncIterator[dict[str, str]]:
            async for chunk in chunks:
                for line in chunk.lines:
                    data = {
                        "attempt": chunk.attempt,
                        "stream": line.stream,
                        "text": line.text,
                        "time": line.time.isoformat(),
                    }
                    yield {"event": "log", "data": json.dumps(data)}
            record = service().view.get(job_id)
            yield {"event": "end", "data": record.state.value if record else "unknown"}

        return EventSourceResponse(events(), ping=15)

    @router.get("/dlq", summary="dead letters: messages a service could not handle, and why")
    async def dead_letters(
        service: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> dict[str, Any]:
        letters = await DeadLetters(state["js"], state["subjects"]).list(service, limit)
        return {"letters": [letter.as_json() for letter in letters]}

    @router.post("/dlq/{seq}/replay", summary="publish a dead letter again on its subject")
    async def replay_dead_letter(seq: int) -> dict[str, Any]:
        try:
            letter = await DeadLetters(state["js"], state["subjects"]).replay(seq)
        except LetterNotFound as exc:
            raise Problem(404, "no such dead letter", str(seq)) from exc
        return {"replayed": letter.as_json()}

    @router.get("/models", summary="registered model versions, newest first")
    async def models(name: str | None = None) -> dict[str, Any]:
        versions = await service().models(name)
        return {"models": [v.model_dump(mode="json") for v in versions]}

    return router
