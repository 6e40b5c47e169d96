"""The UI's workflow pages: pipeline runs (with their DAG), sweeps (trials and the objective plot),
schedules and triggers (with suspend and resume).

Each route asks what the JSON API asks, through the API's own functions: ``pipelines.visible_runs``
and ``visible_run`` (a team sees its own runs), ``NamedObjects.visible``, ``listed`` and
``suspend`` (its own sweeps, schedules and triggers), so the UI holds no copy of who may see what.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from trainyard_contracts.schedules import ScheduleReply, ScheduleRequest
from trainyard_contracts.sweeps import Direction, SweepRecord, SweepReply, SweepRequest, Trial
from trainyard_contracts.triggers import TriggerReply, TriggerRequest
from trainyard_submission.api import Problem
from trainyard_submission.pipelines import visible_run, visible_runs
from trainyard_submission.ui.pages import FormRefused, Viewed, Viewer, checked_form, refused, render
from trainyard_submission.ui.svg import Chart, Series, dag_svg, line_chart
from trainyard_submission.workflowask import NamedObjects

RUNS_SHOWN = 100
Verb = Literal["suspend", "resume"]


def add_workflow_routes(router: APIRouter, state: dict[str, Any]) -> None:
    _add_pipeline_routes(router, state)
    _add_sweep_routes(router, state)
    _add_schedule_routes(router, state)


def _add_pipeline_routes(router: APIRouter, state: dict[str, Any]) -> None:
    @router.get("/pipelines")
    async def pipelines_page(request: Request, seen: Viewed) -> HTMLResponse:
        try:
            runs = await visible_runs(state, seen.principal, RUNS_SHOWN)
        except Problem as exc:
            return refused(request, seen, exc.detail or exc.title, status=exc.status)
        return render(request, "pipelines.html", seen, runs=runs)

    async def shown_run_context(seen: Viewer, run_id: str) -> dict[str, Any]:
        run = await visible_run(state, seen.principal, run_id)
        return {"run": run, "dag": dag_svg(run), "counts": run.job_counts()}

    _add_shown_routes(
        router, "/pipelines/{key}", shown_run_context, "pipeline.html", ("/dag", "_pipeline_dag.html")
    )


def _add_sweep_routes(router: APIRouter, state: dict[str, Any]) -> None:
    sweeps = NamedObjects(state, "sweep", SweepReply, SweepRequest)

    @router.get("/sweeps")
    async def sweeps_page(request: Request, seen: Viewed) -> HTMLResponse:
        try:
            found = await sweeps.listed(seen.principal)
        except Problem as exc:
            return refused(request, seen, exc.detail or exc.title, status=exc.status)
        return render(request, "sweeps.html", seen, sweeps=found)

    async def shown_sweep_context(seen: Viewer, sweep_id: str) -> dict[str, Any]:
        sweep: SweepRecord = await sweeps.visible(seen.principal, sweep_id)
        return sweep_context(sweep)

    _add_shown_routes(
        router, "/sweeps/{key}", shown_sweep_context, "sweep.html", ("/trials", "_sweep_trials.html")
    )


def _add_shown_routes(
    router: APIRouter,
    path: str,
    context_of: Callable[[Viewer, str], Awaitable[dict[str, Any]]],
    page: str,
    part: tuple[str, str],
) -> None:
    """One thing's page at ``path`` and the part of it refreshed while it runs at ``path`` +
    ``part[0]`` (template ``part[1]``); ``context_of`` raises Problem where the viewer may not see
    it (a team sees its own), which the page shows."""

    async def shown(request: Request, seen: Viewer, key: str, template: str) -> HTMLResponse:
        try:
            context = await context_of(seen, key)
        except Problem as exc:
            return refused(request, seen, exc.detail or exc.title, status=exc.status)
        return render(request, template, seen, **context)

    @router.get(path)
    async def whole_page(request: Request, key: str, seen: Viewed) -> HTMLResponse:
        return await shown(request, seen, key, page)

    @router.get(path + part[0])
    async def refreshed_part(request: Request, key: str, seen: Viewed) -> HTMLResponse:
        return await shown(request, seen, key, part[1])


def _add_schedule_routes(router: APIRouter, state: dict[str, Any]) -> None:
    named: dict[str, NamedObjects[Any]] = {
        "schedules": NamedObjects(state, "schedule", ScheduleReply, ScheduleRequest),
        "triggers": NamedObjects(state, "trigger", TriggerReply, TriggerRequest),
    }

    @router.get("/schedules")
    async def schedules_page(request: Request, seen: Viewed) -> HTMLResponse:
        try:
            schedules = await named["schedules"].listed(seen.principal)
            triggers = await named["triggers"].listed(seen.principal)
        except Problem as exc:
            return refused(request, seen, exc.detail or exc.title, status=exc.status)
        return render(request, "schedules.html", seen, schedules=schedules, triggers=triggers)

    async def suspend_or_resume(request: Request, kind: str, name: str, verb: str, seen: Viewer) -> Response:
        try:
            await checked_form(request, seen)
        except FormRefused as exc:
            return refused(request, seen, str(exc))
        try:
            await named[kind].suspend(seen.principal, name, verb)
        except Problem as exc:
            return refused(request, seen, exc.detail or exc.title, status=exc.status)
        return RedirectResponse("/ui/schedules", status_code=303)

    @router.post("/schedules/{name}/{verb}")
    async def schedule_action(request: Request, name: str, verb: Verb, seen: Viewed) -> Response:
        return await suspend_or_resume(request, "schedules", name, verb, seen)

    @router.post("/triggers/{name}/{verb}")
    async def trigger_action(request: Request, name: str, verb: Verb, seen: Viewed) -> Response:
        return await suspend_or_resume(request, "triggers", name, verb, seen)


def ranked(trials: list[Trial], direction: Direction) -> list[Trial]:
    """Trials with an objective value best first, then the others by number."""
    sign = -1 if direction == Direction.maximize else 1
    scored = sorted(
        (t for t in trials if t.value is not None), key=lambda t: (sign * (t.value or 0), t.number)
    )
    return scored + sorted((t for t in trials if t.value is None), key=lambda t: t.number)


def objective_chart(sweep: SweepRecord) -> Chart:
    """Each trial's objective by its number, and the best value so far."""
    maximize = sweep.spec.objective.direction == Direction.maximize
    points = sorted(
        (t.number, t.value) for t in sweep.trials if t.value is not None and math.isfinite(t.value)
    )
    best: list[tuple[float, float]] = []
    for number, value in points:
        if not best or (value > best[-1][1] if maximize else value < best[-1][1]):
            best.append((number, value))
        else:
            best.append((number, best[-1][1]))
    metric = sweep.spec.objective.metric
    return Chart(
        title=f"{metric} over trials ({sweep.spec.objective.direction.value})",
        x_label="trial",
        y_label=metric,
        series=[
            Series("trial", "s-trial", [(float(n), v) for n, v in points], dots=True),
            Series("best so far", "s-best", best),
        ],
        x_ticks=[(float(n), str(n)) for n, _ in points] if len(points) <= 20 else [],
    )


def sweep_context(sweep: SweepRecord) -> dict[str, Any]:
    return {
        "sweep": sweep,
        "trials": ranked(sweep.trials, sweep.spec.objective.direction),
        "params": list(sweep.spec.space),
        "plot": line_chart(objective_chart(sweep)),
    }
