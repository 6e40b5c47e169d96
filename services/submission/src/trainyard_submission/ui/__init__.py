"""The web UI, served by the submission service under ``/ui`` (docs/ui.md).

Server-rendered Jinja2 pages with htmx (vendored in ``static/``, nothing from a CDN) and
server-sent events for the live parts. The pages call the same service functions and access rules
as the JSON API (``api.RouteDeps``, ``access``), never a copy of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from trainyard_submission.runtime import SubmissionRuntime
from trainyard_submission.settings import SubmissionSettings
from trainyard_submission.ui.models import add_model_routes
from trainyard_submission.ui.pages import SignInRequired, build_ui_router, to_sign_in
from trainyard_submission.ui.queuestats import QueueSampler
from trainyard_submission.ui.workflows import add_workflow_routes

STATIC = Path(__file__).parent / "static"


def start_queue_sampler(
    state: dict[str, Any], runtime: SubmissionRuntime, settings: SubmissionSettings
) -> QueueSampler:
    """Sample every queue's depth and longest wait for the queues page's chart (queuestats.py)."""
    index = runtime.service.index
    assert index is not None  # the service's runtime always builds one

    def queue_names() -> list[str]:
        return ["default", *runtime.queue_view.queues]

    sampler = QueueSampler(
        index,
        runtime.service.store,
        queue_names,
        settings.ui_queue_sample_seconds,
        settings.ui_queue_history_hours,
    )
    state["queue_sampler"] = sampler
    return sampler.start()


def install_ui(app: FastAPI, state: dict[str, Any]) -> None:
    """Mount the UI's pages and its static files on the submission app."""
    router = build_ui_router(state)
    add_workflow_routes(router, state)
    add_model_routes(router, state)
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
    app.add_exception_handler(SignInRequired, to_sign_in)  # type: ignore[arg-type]


__all__ = ["install_ui", "start_queue_sampler"]
