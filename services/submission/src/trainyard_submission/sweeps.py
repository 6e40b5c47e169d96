"""``/v1/sweeps``: hyperparameter sweeps over HTTP, answered by the workflow service on
``<prefix>.workflow.sweep-<verb>`` (request/reply), as ``/v1/triggers`` is (triggers.py).

A sweep's job template is held to the creator's queue rules when it is created (with a sample
point of its space: each parameter's low or first choice), as a pipeline's steps are. A team sees
and cancels its own sweeps only; the admin all of them.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from trainyard_contracts.sweeps import SweepReply, SweepRequest, sample_params, trial_job, validate_sweep
from trainyard_submission.access import place_job_document
from trainyard_submission.api import Caller, authorised, refusals_as_problems
from trainyard_submission.pipelines import check_job
from trainyard_submission.tokens import Principal
from trainyard_submission.workflowask import NamedObjects, public


def build_sweep_router(state: dict[str, Any]) -> APIRouter:
    router = APIRouter(prefix="/v1/sweeps", dependencies=[Depends(authorised)], tags=["sweeps"])
    sweeps = NamedObjects(state, "sweep", SweepReply, SweepRequest)

    async def check(caller: Principal, document: dict[str, Any]) -> dict[str, Any]:
        # the trials land where the creator's own jobs would (a team's queue when none is named)
        if "job" in document:
            document = {**document, "job": place_job_document(caller, document["job"])}
        with refusals_as_problems("sweep"):
            spec = validate_sweep(document)
        job = trial_job(spec, sample_params(spec.space), "check", 0)
        await check_job(state, caller, job, "job", "sweep")
        return document

    sweeps.add_routes(
        router,
        check,
        created="run a sweep: a job template, a search space, an objective, limits, sampler, pruner",
        listed="sweeps, by id, with their trials",
        shown="a sweep: its trials (parameters, state, objective), the best one",
        deleted=None,
    )

    # {name}: the sweep's id, as the routes of NamedObjects name it
    @router.post("/{name}/cancel", summary="cancel a sweep: no further trial starts, its jobs stop")
    async def cancel_sweep(name: str, caller: Caller) -> dict[str, Any]:
        await sweeps.visible(caller, name)
        return public((await sweeps.ask("cancel", name=name, by=caller.name)).sweep)

    return router
