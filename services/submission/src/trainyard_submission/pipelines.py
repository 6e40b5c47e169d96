"""``/v1/pipelines``: pipeline runs over HTTP, answered by the workflow service over NATS.

The submission service stays the one public API with the one token check; it asks the workflow
service on ``<prefix>.workflow.<kind>`` (request/reply) and answers with what it says (docs/
workflows.md, "How the API reaches the workflow service"). Before a run is asked for, every step's
job is held to the caller's queue rules, as ``POST /v1/jobs`` holds one job: a pipeline is no way
around them. A team sees and cancels its own runs only; the admin sees all.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from trainyard_contracts import JobSpec, SpecError
from trainyard_contracts.runs import PipelineReply, PipelineRequest, PipelineRun
from trainyard_contracts.sweeps import sample_params, trial_job
from trainyard_contracts.workflow import RUN_ID_PATTERN, PipelineSpec, validate_pipeline
from trainyard_submission.access import QueueRefused, check_submit, place_job_document, place_spec
from trainyard_submission.api import Caller, Problem, authorised, refusals_as_problems
from trainyard_submission.service import JobAlreadyFinished, JobNotFound, SubmissionService
from trainyard_submission.tokens import Principal
from trainyard_submission.workflowask import ask_workflow_for, may_see, public


class RetryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attempt: int | None = Field(None, ge=1, description="the run's attempt seen to end")


async def ask_workflow(state: dict[str, Any], kind: str, request: PipelineRequest) -> PipelineReply:
    return await ask_workflow_for(state, kind, request, PipelineReply)


async def visible_reply(state: dict[str, Any], caller: Principal, run_id: str) -> PipelineReply:
    """The workflow's answer about a run ``caller`` may see (its own, or any for the admin); 404
    otherwise."""
    if not re.match(RUN_ID_PATTERN, run_id):  # no key the bucket could hold
        raise Problem(404, "no such pipeline run", run_id[:100])
    answer = await ask_workflow(state, "status", PipelineRequest(run_id=run_id))
    if answer.run is None or not may_see(caller, answer.run.submitted_by):
        raise Problem(404, "no such pipeline run", run_id)
    return answer


async def visible_run(state: dict[str, Any], caller: Principal, run_id: str) -> PipelineRun:
    run = (await visible_reply(state, caller, run_id)).run
    assert run is not None  # visible_reply answers 404 otherwise
    return run


async def visible_runs(state: dict[str, Any], caller: Principal, limit: int = 100) -> list[PipelineRun]:
    """The runs ``caller`` may see (its own, or all for the admin), newest first."""
    runs = (await ask_workflow(state, "list", PipelineRequest(limit=limit))).runs
    return [run for run in runs if may_see(caller, run.submitted_by)]


async def cancel_run(state: dict[str, Any], caller: Principal, run_id: str) -> PipelineReply:
    """The workflow service ends the run, then its open jobs are cancelled here."""
    await visible_run(state, caller, run_id)
    answer = await ask_workflow(state, "cancel", PipelineRequest(run_id=run_id, by=caller.name))
    await _cancel_open_jobs(state["service"], answer.open_job_ids, caller.name)
    return answer


def build_pipeline_router(state: dict[str, Any]) -> APIRouter:
    router = APIRouter(prefix="/v1/pipelines", dependencies=[Depends(authorised)], tags=["pipelines"])
    ask = functools.partial(ask_workflow, state)

    @router.post(
        "",
        status_code=201,
        summary="run a pipeline: {pipeline: <document>, params: {k: v}, no_cache: false} (no_cache: "
        "cache: true steps run without a look in the step cache)",
    )
    async def run_pipeline(request: Request, caller: Caller) -> JSONResponse:
        try:
            body = PipelineRequest.model_validate_json(await request.body())
        except ValueError as exc:
            raise Problem(422, "invalid request", str(exc)[:1000]) from exc
        if body.pipeline is None:
            raise Problem(422, "invalid request", "pipeline: required field is missing")
        body = body.model_copy(update={"pipeline": place_pipeline(caller, body.pipeline)})
        await check_steps(state, caller, body)
        answer = await ask("run", body.model_copy(update={"by": caller.name}))
        return JSONResponse(public(answer.run), status_code=201)

    @router.get("", summary="pipeline runs, newest first")
    async def list_pipelines(
        caller: Caller, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> dict[str, Any]:
        return {"runs": [public(run) for run in await visible_runs(state, caller, limit)]}

    @router.get("/{run_id}", summary="a pipeline run: its steps, their jobs and states")
    async def get_pipeline(run_id: str, caller: Caller) -> dict[str, Any]:
        return public(await visible_run(state, caller, run_id))

    @router.post("/{run_id}/cancel", summary="cancel a pipeline run: no further step starts, its jobs stop")
    async def cancel_pipeline(run_id: str, caller: Caller) -> dict[str, Any]:
        return public((await cancel_run(state, caller, run_id)).run)

    @router.post(
        "/{run_id}/retry",
        summary="retry a failed or cancelled run from the steps that did not succeed; body "
        '{"attempt": N}: the attempt seen to end (asking again for it is the same retry)',
    )
    async def retry_pipeline(run_id: str, request: Request, caller: Caller) -> dict[str, Any]:
        try:
            seen = RetryRequest.model_validate_json(await request.body() or b"{}")
        except ValueError as exc:
            raise Problem(422, "invalid request", str(exc)[:1000]) from exc
        run = await visible_run(state, caller, run_id)
        # the steps run again as the caller's jobs: held to the queue rules as they stand now
        await check_spec_steps(state, caller, run.spec)
        ask_retry = PipelineRequest(run_id=run_id, attempt=seen.attempt, by=caller.name)
        return public((await ask("retry", ask_retry)).run)

    return router


async def check_pipeline(
    state: dict[str, Any], caller: Principal, pipeline: dict[str, Any], params: dict[str, Any]
) -> None:
    """A schedule's or trigger's pipeline held to its creator's queue rules (with ``params``)."""
    await check_steps(state, caller, PipelineRequest.model_validate({"pipeline": pipeline, "params": params}))


def pipeline_document_check(
    state: dict[str, Any],
) -> Callable[[Principal, dict[str, Any]], Awaitable[dict[str, Any]]]:
    """The check of a schedule or trigger document: its ``pipeline`` with its ``params``; answers
    the document with the pipeline's steps placed in the creator's queue (place_pipeline)."""

    async def check(caller: Principal, document: dict[str, Any]) -> dict[str, Any]:
        pipeline, params = document.get("pipeline"), document.get("params") or {}
        if isinstance(pipeline, dict) and isinstance(params, dict):
            document = {**document, "pipeline": place_pipeline(caller, pipeline)}
            await check_pipeline(state, caller, document["pipeline"], params)
        return document

    return check


def place_pipeline(caller: Principal, pipeline: dict[str, Any]) -> dict[str, Any]:
    """The pipeline with each step's job (a sweep step's template) in the queue the caller's own
    submission would land in (a team's, when it names none): the workflow service submits them
    with its identity, not the caller's."""
    steps = pipeline.get("steps")
    if not isinstance(steps, list):
        return pipeline
    placed = []
    for step in steps:
        if isinstance(step, dict) and isinstance(step.get("sweep"), dict):
            sweep = step["sweep"]
            step = {**step, "sweep": {**sweep, "job": place_job_document(caller, sweep.get("job"))}}
        elif isinstance(step, dict) and "job" in step:
            step = {**step, "job": place_job_document(caller, step["job"])}
        placed.append(step)
    return {**pipeline, "steps": placed}


async def check_steps(state: dict[str, Any], caller: Principal, body: PipelineRequest) -> None:
    with refusals_as_problems("pipeline"):
        pipeline = validate_pipeline(body.pipeline, body.params)
    await check_spec_steps(state, caller, pipeline)


async def check_spec_steps(state: dict[str, Any], caller: Principal, pipeline: PipelineSpec) -> None:
    # what a submit of each step would refuse is refused now, naming the step, not when the step's
    # turn comes (an unknown queue, a spec no executor could hold)
    for i, step in enumerate(pipeline.steps):
        if step.sweep is not None:  # its trials' jobs: the template with a sample point
            trial = trial_job(step.sweep, sample_params(step.sweep.space), "check", 0)
            await check_job(state, caller, trial, f"steps.{i}.sweep.job", "pipeline")
        elif step.job is not None:
            await check_job(state, caller, step.job, f"steps.{i}.job", "pipeline")


async def check_job(state: dict[str, Any], caller: Principal, job: JobSpec, where: str, kind: str) -> None:
    """What a submit of ``job`` by ``caller`` would refuse, refused now naming ``where`` (a
    pipeline's step, a sweep's template): 403 for a queue it may not use, 422 for an unknown queue
    or a spec no online executor could hold."""
    spec = place_spec(caller, job)
    try:
        check_submit(caller, spec, await state["queues"].require(spec.queue))
        await state["service"].check_fits(spec)
    except QueueRefused as exc:
        raise Problem(403, "forbidden", f"{where}: {exc.detail}", queue=exc.queue) from exc
    except SpecError as exc:
        errors = [{**e.model_dump(), "field": f"{where}.{e.field}"} for e in exc.errors]
        raise Problem(422, f"invalid {kind}", f"{where}: {exc}", errors=errors) from exc


async def _cancel_open_jobs(service: SubmissionService, open_job_ids: list[str], by: str) -> None:
    """The run's jobs that have not ended are cancelled as `trainyard cancel` cancels one: the API
    owns cancels (the job record's compare-and-set and the cancel_requested event), so the workflow
    service needs no write on job records."""
    for job_id in open_job_ids:
        with contextlib.suppress(JobNotFound, JobAlreadyFinished):
            await service.cancel(job_id, by)
