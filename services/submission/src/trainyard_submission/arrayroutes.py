"""Job arrays over HTTP: ``POST /v1/jobs`` with ``array:`` and ``/v1/arrays/{id}``.

An array is a one-step pipeline run (arrayjobs.py), asked of the workflow service as
``/v1/pipelines`` asks for a run, under the same queue rules and visibility; the answers are the
array as counts per state (:class:`ArrayStatus`), never its 10,000 jobs.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from trainyard_contracts.arrayview import ARRAY_STEP, ArrayStatus, array_status, is_array_run
from trainyard_contracts.runs import PipelineReply, PipelineRequest
from trainyard_submission.api import Caller, Problem, authorised
from trainyard_submission.arrayjobs import ArrayRequest
from trainyard_submission.pipelines import ask_workflow, cancel_run, check_steps, visible_reply
from trainyard_submission.tokens import Principal


async def submit_array(state: dict[str, Any], caller: Principal, array: ArrayRequest) -> JSONResponse:
    """Ask the workflow service for the array; it, not this service, submits every child."""
    request = PipelineRequest(pipeline=array.pipeline(), by=caller.name)
    await check_steps(state, caller, request)
    answer = await ask_workflow(state, "run", request)
    return JSONResponse(_public(_status(answer)), status_code=201)


def build_array_router(state: dict[str, Any]) -> APIRouter:
    router = APIRouter(prefix="/v1/arrays", dependencies=[Depends(authorised)], tags=["arrays"])

    @router.get("/{array_id}", summary="a job array: its jobs counted per state")
    async def get_array(array_id: str, caller: Caller) -> dict[str, Any]:
        return _public(_status(await _visible_array(state, caller, array_id)))

    @router.post("/{array_id}/cancel", summary="cancel a job array: no further job starts, its jobs stop")
    async def cancel_array(array_id: str, caller: Caller) -> dict[str, Any]:
        await _visible_array(state, caller, array_id)
        return _public(_status(await cancel_run(state, caller, array_id)))

    return router


async def _visible_array(state: dict[str, Any], caller: Principal, array_id: str) -> PipelineReply:
    answer = await visible_reply(state, caller, array_id)
    if answer.run is None or not is_array_run(answer.run):
        raise Problem(404, "no such array", f"{array_id} is a pipeline run: see /v1/pipelines/{array_id}")
    return answer


def _status(answer: PipelineReply) -> ArrayStatus:
    if answer.run is None:
        raise Problem(503, "workflow unavailable", "the workflow service answered without the array")
    # the run's jobs may be trimmed to fit the reply; its counts are whole
    return array_status(answer.run, answer.counts.get(ARRAY_STEP))


def _public(status: ArrayStatus) -> dict[str, Any]:
    return {"kind": "array", **status.model_dump(mode="json")}
