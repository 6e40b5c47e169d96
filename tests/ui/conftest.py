"""The UI in a real browser: Debian's chromium driven by Playwright, against the submission app
served over HTTP (uvicorn, in this process) on the session's real nats-server.

The browser is one per session (starting chromium costs seconds on a busy machine); every test has
its own browser context (cookies), prefix and services. Without chromium the tests skip, except
under CI=true, where they fail: CI installs it (.ci/run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn

from trainyard_executor.app import create_app as executor_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_registry.app import create_app as registry_app
from trainyard_registry.settings import RegistrySettings
from trainyard_scheduler.testkit import quick_scheduler
from trainyard_shared.natsserver import free_port
from trainyard_shared.testing.helpers import common_settings, eventually, running
from trainyard_submission.app import create_app as submission_app
from trainyard_submission.runtime import SubmissionRuntime
from trainyard_submission.settings import SubmissionSettings
from trainyard_workflow.app import create_app as workflow_app
from trainyard_workflow.settings import WorkflowSettings

ADMIN_TOKEN = "ui-admin-token-0123456789"
SCREENSHOTS = Path(__file__).parent / "screenshots"
PY = sys.executable
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def chromium_path() -> str:
    found = (
        os.environ.get("TRAINYARD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: CI runs the UI tests (.ci/run installs it)")
    pytest.skip("chromium is not installed (apt-get install chromium); CI runs these tests")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    executable = chromium_path()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest_asyncio.fixture(loop_scope="session")
async def context(browser: Any) -> AsyncIterator[Any]:
    ctx = await browser.new_context(viewport={"width": 1280, "height": 860})
    ctx.set_default_timeout(30_000)
    yield ctx
    await ctx.close()


async def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


@dataclass
class UiStack:
    base: str
    app: Any
    pages: list[Any] = field(default_factory=list)

    async def page(self, context: Any) -> Any:
        """A new page, closed before the server stops (an open log stream would hold it up)."""
        page = await context.new_page()
        self.pages.append(page)
        return page

    @property
    def runtime(self) -> SubmissionRuntime:
        return self.app.state.runtime.get()  # type: ignore[no-any-return]

    def api(self, token: str = ADMIN_TOKEN) -> httpx.AsyncClient:
        """The JSON API on the same socket, with ``token``."""
        return httpx.AsyncClient(base_url=self.base, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    async def sign_in(self, page: Any, token: str = ADMIN_TOKEN) -> None:
        await page.goto(f"{self.base}/ui/sign-in")
        await page.fill("#token", token)
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{self.base}/ui/jobs**")


@contextlib.asynccontextmanager
async def ui_stack(
    nats_server: Any,
    prefix: str,
    tmp_path: Path,
    jobs_run: bool = False,
    workflows: bool = False,
    registry_uri: str | None = None,
) -> AsyncIterator[UiStack]:
    """The submission app served on a free loopback port; ``jobs_run``: with a scheduler and a
    local executor (in process) so that jobs start; ``workflows``: with the workflow service (in
    process) for pipelines, sweeps, schedules and triggers; ``registry_uri``: with the registry
    service (in process) on that MLflow store, for model aliases. Entered in the test's own task
    (anyio's cancel scopes must be left by the task that entered them)."""
    common = common_settings(nats_server.url, prefix, tmp_path / "data")
    # the queue chart sampled twice a second: a test sees its lines within seconds
    app = submission_app(common, SubmissionSettings(token=ADMIN_TOKEN, ui_queue_sample_seconds=0.5))
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        if jobs_run:
            scheduler = quick_scheduler(common)
            executor = executor_app(
                common,
                ExecutorSettings(id="exec-ui", cpu=4, memory=4096, heartbeat_seconds=0.5, lease_seconds=3),
            )
            await stack.enter_async_context(running(scheduler))
            await stack.enter_async_context(running(executor))
        if registry_uri is not None:
            registry = registry_app(common, RegistrySettings(tracking_uri=registry_uri))
            await stack.enter_async_context(running(registry))
        if workflows:
            await stack.enter_async_context(
                running(workflow_app(common, WorkflowSettings(reconcile_seconds=1)))
            )
        port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, lifespan="off", log_level="warning", timeout_graceful_shutdown=2
        )
        server = uvicorn.Server(config)
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]  # Ctrl-C is pytest's
        serving = asyncio.create_task(server.serve())

        async def started() -> bool:
            return server.started

        ui = UiStack(f"http://127.0.0.1:{port}", app)
        try:
            await eventually(started, 30, "uvicorn serving the submission app")
            yield ui
        finally:
            for page in ui.pages:
                await page.close()
            server.should_exit = True
            await asyncio.wait_for(serving, 30)
