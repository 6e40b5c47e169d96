"""``/v1/triggers``: event triggers over HTTP, answered by the workflow service on
``<prefix>.workflow.trigger-<verb>`` (request/reply), as ``/v1/schedules`` is (schedules.py).

A trigger's pipeline is held to the creator's queue rules when it is created (with the pipeline's
own defaults; the event's parameters come later). A team sees and deletes its own triggers only;
the admin all of them.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from trainyard_contracts.triggers import TriggerReply, TriggerRequest
from trainyard_contracts.workflow import job_pipeline
from trainyard_submission.access import place_job_document
from trainyard_submission.api import authorised
from trainyard_submission.pipelines import check_pipeline, pipeline_document_check
from trainyard_submission.tokens import Principal
from trainyard_submission.workflowask import CheckDocument, NamedObjects


def trigger_document_check(state: dict[str, Any]) -> CheckDocument:
    """A trigger's pipeline, or its ``job`` as the one-step pipeline it runs (with the job's own
    params as the defaults), held to the creator's queue rules."""
    pipeline_check = pipeline_document_check(state)

    async def check(caller: Principal, document: dict[str, Any]) -> dict[str, Any]:
        job = document.get("job")
        if isinstance(job, dict) and "pipeline" not in document:
            document = {**document, "job": place_job_document(caller, job)}
            await check_pipeline(state, caller, job_pipeline(document["job"]), {})
            return document
        return await pipeline_check(caller, document)

    return check


def build_trigger_router(state: dict[str, Any]) -> APIRouter:
    router = APIRouter(prefix="/v1/triggers", dependencies=[Depends(authorised)], tags=["triggers"])
    triggers = NamedObjects(state, "trigger", TriggerReply, TriggerRequest)

    triggers.add_routes(
        router,
        trigger_document_check(state),
        created="create a trigger: subject, filter, params and dedupe_key (JMESPath), debounce, pipeline",
        listed="triggers, by name, with what they did with events (fired, filtered, deduplicated...)",
        shown="a trigger: its spec, the runs it fired and the events it turned away",
        deleted="delete a trigger; the runs it started go on",
    )
    triggers.add_suspend_routes(
        router,
        suspended="suspend a trigger: events on its subject are counted, never fired, until resumed",
        resumed="resume a trigger: events from now on fire again (none that came while suspended)",
    )
    return router
