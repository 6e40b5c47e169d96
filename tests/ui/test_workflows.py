"""The workflow pages in a real browser: a pipeline run's DAG with its step states changing live,
a sweep's trials and objective plot, schedules and triggers suspended and resumed from the page,
on the real scheduler, local executor and workflow service (in process, the session's nats-server)."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from .conftest import PY, UiStack, screenshot, ui_stack

pytestmark = [
    pytest.mark.ui,
    pytest.mark.service,
    pytest.mark.local,
    pytest.mark.workflow,
    pytest.mark.asyncio(loop_scope="session"),
]
# waits until its marker file exists: the test decides when `train` ends
WAIT_FOR = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.1)\n"
# a sweep's trial: reports its x as the score once
TRIAL = "import sys, trainyard\ntrainyard.report(0, score=float(sys.argv[1]))\n"


def pipeline(marker: str) -> dict[str, object]:
    return {
        "name": "retrain",
        "steps": [
            {"name": "prepare", "job": {"name": "prepare", "command": ["true"]}},
            {
                "name": "fit",
                "depends": ["prepare"],
                "array": "0-2",
                "job": {"name": "fit", "command": ["true"]},
            },
            {
                "name": "train",
                "depends": ["fit"],
                "job": {"name": "train", "command": [PY, "-c", WAIT_FOR, marker]},
            },
            {"name": "evaluate", "depends": ["train"], "job": {"name": "evaluate", "command": ["true"]}},
            {
                "name": "report",
                "depends": {"train": "failed"},
                "job": {"name": "report", "command": ["true"]},
            },
        ],
    }


def step_box(page, name: str):
    return page.locator(f'svg.dag g.step[data-step="{name}"]')


async def test_a_pipeline_runs_dag_shows_its_step_states_live(context, nats_server, prefix, tmp_path):
    marker = tmp_path / "train-may-end"
    async with ui_stack(nats_server, prefix, tmp_path, jobs_run=True, workflows=True) as ui:
        async with ui.api() as api:
            started = await api.post("/v1/pipelines", json={"pipeline": pipeline(str(marker))})
            assert started.status_code == 201, started.text
        run_id = started.json()["run_id"]
        page = await ui.page(context)
        await ui.sign_in(page)

        await page.goto(f"{ui.base}/ui/pipelines")
        await page.get_by_role("link", name=run_id).click()
        await page.wait_for_url(f"{ui.base}/ui/pipelines/{run_id}")
        # train waits for its marker: the steps before it have ended, the ones after wait
        await expect(step_box(page, "train")).to_have_attribute("data-state", "running", timeout=60_000)
        await expect(step_box(page, "prepare")).to_have_attribute("data-state", "succeeded")
        await expect(step_box(page, "fit")).to_have_attribute("data-state", "succeeded")
        await expect(step_box(page, "fit")).to_contain_text("3 done · 0 failed · 3 total")
        await expect(step_box(page, "evaluate")).to_have_attribute("data-state", "pending")
        assert (
            await page.locator("svg.dag path.edge").count() == 4
        )  # prepare→fit→train→evaluate, train→report
        await screenshot(page, "pipeline-dag-running")

        # the page follows the run without a reload: train ends, evaluate runs, report is skipped
        marker.write_text("go")
        await expect(page.locator("#run dl .state").first).to_have_text("succeeded", timeout=60_000)
        await expect(step_box(page, "evaluate")).to_have_attribute("data-state", "succeeded")
        await expect(step_box(page, "report")).to_have_attribute("data-state", "skipped")
        await screenshot(page, "pipeline-dag-succeeded")

        # each step's box links its job's page
        await step_box(page, "train").click()
        await page.wait_for_url(f"{ui.base}/ui/jobs/*")
        await expect(page.locator("h1")).to_have_text("train")


async def sweep_with_trials(ui: UiStack) -> str:
    sweep = {
        "name": "toy",
        "job": {"name": "toy-trial", "command": [PY, "-c", TRIAL, "${{ params.x }}"]},
        "space": {"x": {"type": "categorical", "choices": [3, 9, 1]}},
        "objective": {"metric": "score", "direction": "maximize"},
        "sampler": {"type": "grid"},
        "max_trials": 3,
        "max_parallel": 3,
    }
    async with ui.api() as api:
        created = await api.post("/v1/sweeps", json=sweep)
        assert created.status_code == 201, created.text
    return str(created.json()["sweep_id"])


async def test_a_sweeps_trials_best_first_and_a_schedule_suspended_from_the_page(
    context, nats_server, prefix, tmp_path
):
    async with ui_stack(nats_server, prefix, tmp_path, jobs_run=True, workflows=True) as ui:
        sweep_id = await sweep_with_trials(ui)
        schedule = {
            "name": "nightly",
            "cron": "0 3 * * *",
            "pipeline": {
                "name": "nightly",
                "steps": [{"name": "a", "job": {"name": "a", "command": ["true"]}}],
            },
        }
        async with ui.api() as api:
            assert (await api.post("/v1/schedules", json=schedule)).status_code == 201
        page = await ui.page(context)
        await ui.sign_in(page)

        await page.goto(f"{ui.base}/ui/sweeps")
        await page.get_by_role("link", name=sweep_id).click()
        # the page refreshes until the sweep ends; its trials come best first
        await expect(page.locator("#sweep dl .state").first).to_have_text("succeeded", timeout=90_000)
        values = await page.locator("table.trials tbody td.num").all_inner_texts()
        assert values == ["9", "3", "1"], values
        await expect(page.locator("table.trials tbody tr").first).to_contain_text("best")
        assert await page.locator("svg.chart circle.s-trial").count() == 3
        await screenshot(page, "sweep-trials")

        await page.goto(f"{ui.base}/ui/schedules")
        row = page.locator("tr[data-name=nightly]")
        await expect(row).to_contain_text("active")
        await row.get_by_role("button", name="Suspend").click()
        await page.wait_for_url(f"{ui.base}/ui/schedules")
        await expect(row).to_contain_text("suspended")
        async with ui.api() as api:
            shown = (await api.get("/v1/schedules/nightly")).json()
        assert shown["spec"]["suspended"] is True
        await screenshot(page, "schedules")
        await row.get_by_role("button", name="Resume").click()
        await expect(row).to_contain_text("active")
