"""The pages that follow the cluster without a reload, in a real browser against the submission
app (no scheduler: the jobs are records written by the service's own store, with their index
entries): the queues page's numbers, and the jobs table's new rows."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from trainyard_contracts import JobState, QueueConfig

from .conftest import screenshot, ui_stack
from .seeding import record, seed

pytestmark = [pytest.mark.ui, pytest.mark.service, pytest.mark.asyncio(loop_scope="session")]


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
