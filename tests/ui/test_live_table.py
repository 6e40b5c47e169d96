"""The pages that follow the cluster without a reload, in a real browser against the submission
app (no scheduler: the jobs are records written by the service's own store, with their index
entries): the queues page's numbers, and the jobs table's new rows."""

from __future__ import annotations

import json

import pytest
from playwright.async_api import expect

from trainyard_contracts import JobState, QueueConfig, lifecycle
from trainyard_contracts._time import utcnow
from trainyard_submission.tokens import BOOTSTRAP_ID, Principal

from .conftest import screenshot, ui_stack
from .seeding import record, seed

pytestmark = [pytest.mark.ui, pytest.mark.service, pytest.mark.asyncio(loop_scope="session")]
ADMIN = Principal(BOOTSTRAP_ID, admin=True, team=None)


async def test_the_queues_page_counts_a_new_waiting_job_without_a_reload(
    context, nats_server, prefix, tmp_path
):
    async with ui_stack(nats_server, prefix, tmp_path) as ui:
        await ui.runtime.queues.put(QueueConfig(name="busy"))
        await seed(
            ui.runtime.service.store, [record(i, queue="busy", state=JobState.QUEUED) for i in range(3)]
        )
        page = await ui.page(context)
        await ui.sign_in(page)
        await page.goto(f"{ui.base}/ui/queues")
        waiting = page.locator("tr[data-queue=busy] td.waiting")
        await expect(waiting).to_contain_text("3")
        await page.evaluate("window.__same_page = true")  # gone if the page were loaded again

        await seed(
            ui.runtime.service.store,
            [record(10 + i, queue="busy", state=JobState.SUBMITTED) for i in range(2)],
        )
        await expect(waiting).to_contain_text("5", timeout=30_000)  # counted by the server, asked every 5 s
        await expect(waiting).to_contain_text("longest")
        assert await page.evaluate("window.__same_page === true")
        await screenshot(page, "queues-refreshed")


async def test_a_new_job_appears_on_the_open_jobs_page_and_follows_its_state(
    context, nats_server, prefix, tmp_path
):
    async with ui_stack(nats_server, prefix, tmp_path) as ui:
        store = ui.runtime.service.store
        await seed(store, [record(i, state=JobState.SUCCEEDED) for i in range(3)])
        page = await ui.page(context)
        await ui.sign_in(page)  # the jobs table, first page: its new rows stream in
        await expect(page.locator("table.jobs tbody tr")).to_have_count(3)
        await page.evaluate("window.__same_page = true")  # gone if the page were loaded again

        # submitted while the page is open: one in the page's filters, one not (another label)
        fresh = await submit(ui, "fresh", {"team": "a"})
        await expect(page.locator(f"#new-rows #row-{fresh}")).to_be_visible(timeout=30_000)
        row = page.locator(f"#row-{fresh}")
        await expect(row).to_have_attribute("data-state", "submitted")

        # a filtered page: only its own new jobs
        filtered = await ui.page(context)
        await filtered.goto(f"{ui.base}/ui/jobs?label=team%3Db")
        await expect(filtered.locator("p.empty")).to_be_visible()  # nothing yet, and no empty table
        await expect(filtered.locator("table.jobs")).to_be_hidden()
        other = await submit(ui, "other", {"team": "b"})
        await expect(filtered.locator(f"#row-{other}")).to_be_visible(timeout=30_000)
        await expect(filtered.locator("p.empty")).to_be_hidden()
        await expect(filtered.locator(f"#row-{fresh}")).to_have_count(0)
        await screenshot(filtered, "jobs-new-row-filtered")

        # the added row follows its job: moved to queued behind the page's back
        await store.update(fresh, lambda r: lifecycle.advance(r, JobState.QUEUED, utcnow()))
        await expect(row).to_have_attribute("data-state", "queued", timeout=30_000)
        await expect(page.locator(f"#row-{other}")).to_be_visible()  # the first page: any label
        assert await page.locator("#new-rows tr").count() == 2
        assert await page.evaluate("window.__same_page === true")
        await screenshot(page, "jobs-new-rows")


async def submit(ui, name: str, labels: dict[str, str]) -> str:
    spec = {"name": name, "command": ["true"], "labels": labels}
    submitted = await ui.runtime.service.submit(json.dumps(spec), submitted_by="api", principal=ADMIN)
    return submitted.job_id
