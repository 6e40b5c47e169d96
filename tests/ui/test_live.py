"""A job's page while the job runs: live logs, why another waits, cancel, the jobs table's rows
following their jobs — in a real browser, with the real scheduler and a local executor in process
on the session's nats-server."""

from __future__ import annotations

import json

import pytest
from playwright.async_api import expect

from trainyard_contracts import QueueConfig
from trainyard_contracts.queues import Quota
from trainyard_submission.tokens import BOOTSTRAP_ID, Principal

from .conftest import PY, UiStack, screenshot, ui_stack

pytestmark = [
    pytest.mark.ui,
    pytest.mark.service,
    pytest.mark.local,
    pytest.mark.asyncio(loop_scope="session"),
]
ADMIN = Principal(BOOTSTRAP_ID, admin=True, team=None)
LINE = "hello from the job, line 1"
# prints a line, then runs until cancelled
TALKER = f"import time; print({LINE!r}, flush=True); time.sleep(300)"
# waits until its marker file exists: the test decides when the job ends
WAIT_FOR = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.1)\n"
# the page's EventSources, kept where the test can reach them (htmx keeps its own out of sight)
KEEP_EVENT_SOURCES = """
window.__sources = [];
window.EventSource = class extends window.EventSource {
  constructor(...args) { super(...args); window.__sources.push(this); }
};
"""
# what a dropped connection looks like to the page: the source closed, its error handler called
DROP_LOG_STREAM = """
() => { const source = window.__sources.at(-1); source.close(); source.onerror(new Event("error")); }
"""


async def submit(ui: UiStack, name: str, queue: str = "default", cpu: float = 1) -> str:
    spec = {"name": name, "queue": queue, "command": [PY, "-c", TALKER], "resources": {"cpu": cpu}}
    submitted = await ui.runtime.service.submit(json.dumps(spec), submitted_by="api", principal=ADMIN)
    return submitted.job_id


async def test_a_running_jobs_log_line_appears_and_a_waiting_job_says_why(
    context, nats_server, prefix, tmp_path
):
    async with ui_stack(nats_server, prefix, tmp_path, jobs_run=True) as ui:
        await ui.runtime.queues.put(QueueConfig(name="slim", quota=Quota(cpu=1)))
        talker = await submit(ui, "talker", queue="slim")
        waiter = await submit(ui, "waiter", queue="slim")
        page = await ui.page(context)
        await page.add_init_script(KEEP_EVENT_SOURCES)
        await ui.sign_in(page)

        await page.goto(f"{ui.base}/ui/jobs/{talker}")
        await expect(page.locator("#log-lines")).to_contain_text(LINE, timeout=30_000)
        await expect(page.locator("#summary dl .state")).to_have_text("running", timeout=30_000)
        await screenshot(page, "job-running-logs")

        # the connection drops and the page reconnects: the output is replayed, not doubled
        async with page.expect_response(lambda r: r.url.endswith("/logs/stream"), timeout=30_000):
            await page.evaluate(DROP_LOG_STREAM)
        await expect(page.locator("#log-lines")).to_contain_text(LINE, timeout=30_000)
        shown = (await page.locator("#log-lines").inner_text()).splitlines()
        assert shown.count(LINE) == 1, shown  # the job's line once (the executor's first line names it too)

        # the second job of the queue waits for the queue's quota, and its page says so
        await page.goto(f"{ui.base}/ui/jobs/{waiter}")
        why = page.locator("p.why")
        await expect(why).to_contain_text("quota", timeout=30_000)
        await expect(page.locator("#log-lines")).to_be_empty()
        await screenshot(page, "job-waiting-why")

        await page.goto(f"{ui.base}/ui/executors")
        row = page.locator("tr", has_text="exec-ui")
        await expect(row).to_contain_text("alive")
        await expect(row.locator("td").nth(4)).to_have_text("1")  # the talker
        await expect(row.locator(".use[data-resource=cpu]")).to_contain_text("1 / 4")  # its cpu of 4
        await screenshot(page, "executors")

        # the queue: its quota, one job running against it, one waiting, and its chart over time
        await page.goto(f"{ui.base}/ui/queues")
        slim = page.locator("tr[data-queue=slim]")
        await expect(slim).to_contain_text("1 / ∞ / ∞")
        await expect(slim.locator("td.waiting")).to_contain_text("1")
        await expect(slim.locator("td.running")).to_have_text("1")
        await expect(slim.locator(".use[data-resource=cpu]")).to_contain_text("1 / 1")
        await expect(slim.locator("meter")).to_have_attribute("value", "1.0")
        chart = page.locator("section.queue-charts[data-queue=slim] svg.chart").first
        await expect(chart.locator("polyline.s-depth")).to_have_count(1)  # two samples or more: a line
        await screenshot(page, "queues")


async def test_cancel_from_the_page_ends_the_job(context, nats_server, prefix, tmp_path):
    async with ui_stack(nats_server, prefix, tmp_path, jobs_run=True) as ui:
        job = await submit(ui, "to-cancel")
        page = await ui.page(context)
        await ui.sign_in(page)
        await page.goto(f"{ui.base}/ui/jobs/{job}")
        await expect(page.locator("#log-lines")).to_contain_text(LINE, timeout=30_000)

        await page.get_by_role("button", name="Cancel job").click()
        # the facts refresh until the job has ended; the log pane's stream names the end
        await expect(page.locator("#summary dl .state")).to_have_text("cancelled", timeout=30_000)
        await expect(page.locator("#log-end")).to_contain_text("ended: cancelled", timeout=30_000)
        await expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
        assert (await ui.runtime.service.get(job)).state.value == "cancelled"
        await screenshot(page, "job-cancelled")


async def test_a_jobs_row_in_the_table_changes_state_without_a_reload(context, nats_server, prefix, tmp_path):
    marker = tmp_path / "may-end"
    async with ui_stack(nats_server, prefix, tmp_path, jobs_run=True) as ui:
        spec = {"name": "short", "command": [PY, "-c", WAIT_FOR, str(marker)]}
        job = (await ui.runtime.service.submit(json.dumps(spec), submitted_by="api", principal=ADMIN)).job_id
        page = await ui.page(context)
        await ui.sign_in(page)  # lands on the jobs table, the job not ended yet
        row = page.locator(f"#row-{job}")
        await expect(row).to_have_attribute("data-state", "running", timeout=60_000)
        await screenshot(page, "jobs-live-running")
        await page.evaluate("window.__same_page = true")  # gone if the page were loaded again

        marker.write_text("go")
        await expect(row).to_have_attribute("data-state", "succeeded", timeout=60_000)
        await expect(row.locator(".state")).to_have_text("succeeded")
        assert await page.evaluate("window.__same_page === true")
        await expect(page.locator("#live-rows")).to_have_count(0)  # every row ended: no more asking
        await screenshot(page, "jobs-live-succeeded")
