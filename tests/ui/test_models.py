"""A model's page in a real browser: its aliases with their history, "Roll back" (refused for a
team token on production, as the API refuses it; done for the admin, the alias moving back in the
registry), two versions compared, and a version's lineage, on the real registry service and a
real MLflow SQLite store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from playwright.async_api import expect

from trainyard_contracts import ModelVersionRecord
from trainyard_registry.mlflow_store import MlflowModelStore

from .conftest import ADMIN_TOKEN, UiStack, screenshot, ui_stack
from .seeding import model_version

pytestmark = [
    pytest.mark.ui,
    pytest.mark.service,
    pytest.mark.registry,
    pytest.mark.asyncio(loop_scope="session"),
]


async def versions_listed(
    ui: UiStack, store: MlflowModelStore, outputs: Path, name: str, team: str, accuracies: list[float]
) -> list[int]:
    """Versions registered in MLflow (as the registry does when a job succeeds) and in the models
    bucket the listing reads (as the registry's event does)."""
    models = await ui.runtime.js.key_value(ui.app.state.trainyard["subjects"].buckets.models)
    numbers = []
    for accuracy in accuracies:
        number = await asyncio.to_thread(model_version, store, outputs, name, team, accuracy)
        listed = ModelVersionRecord(
            name=name, version=number, job_id=f"job{number:010d}", queue=team, metrics={"accuracy": accuracy}
        )
        await models.put(listed.key, listed.model_dump_json().encode())
        numbers.append(number)
    return numbers


async def test_an_alias_rolled_back_from_the_page_moves_back_and_a_team_may_not_roll_back_production(
    context, nats_server, prefix, tmp_path
):
    store = await asyncio.to_thread(MlflowModelStore, f"sqlite:///{tmp_path / 'mlflow.db'}")
    async with ui_stack(nats_server, prefix, tmp_path, registry_uri=store.tracking_uri) as ui:
        v1, v2 = await versions_listed(ui, store, tmp_path / "outputs", "digits", "team-a", [0.91, 0.95])
        async with ui.api() as api:
            for version in (v1, v2):
                promoted = await api.post("/v1/models/digits/aliases/production", json={"version": version})
                assert promoted.status_code == 200, promoted.text
        _, team_token = await ui.runtime.tokens.create("team-a", admin=False)

        # a team token sees its model's aliases, and its rollback of production is refused
        page = await ui.page(context)
        await ui.sign_in(page, team_token)
        await page.goto(f"{ui.base}/ui/models")
        await page.get_by_role("link", name="digits").first.click()
        await page.wait_for_url(f"{ui.base}/ui/models/digits")
        production = page.locator("tr[data-alias=production]")
        await expect(production.locator("td.holder")).to_have_text(f"v{v2}")
        await expect(production).to_contain_text(f"v{v1}")  # its history
        async with page.expect_response(lambda r: r.url.endswith("/rollback")) as answer:
            await production.get_by_role("button", name=f"Roll back production to v{v1}").click()
        assert (await answer.value).status == 403
        await page.get_by_role("alert").filter(has_text="admin").wait_for()
        async with ui.api() as api:
            held = (await api.get("/v1/models/digits/aliases/production")).json()
        assert held["state"]["version"] == v2

        # the admin's rollback from the page moves it back, in the registry and in MLflow
        await ui.sign_in(page, ADMIN_TOKEN)
        await page.goto(f"{ui.base}/ui/models/digits")
        await production.get_by_role("button", name=f"Roll back production to v{v1}").click()
        await page.wait_for_url(f"{ui.base}/ui/models/digits")
        await expect(production.locator("td.holder")).to_have_text(f"v{v1}")
        await expect(production.get_by_role("button")).to_have_count(0)  # nothing before v1
        async with ui.api() as api:
            held = (await api.get("/v1/models/digits/aliases/production")).json()
        assert held["state"]["version"] == v1 and held["state"]["history"] == []
        client = MlflowClient(tracking_uri=store.tracking_uri)
        mlflow_holder = await asyncio.to_thread(client.get_model_version_by_alias, "digits", "production")
        assert int(mlflow_holder.version) == v1
        await screenshot(page, "model-aliases")

        # two versions side by side: what differs is marked
        await page.get_by_label("Compare").select_option(str(v1))
        await page.get_by_label("with").select_option(str(v2))
        await page.get_by_role("button", name="Compare").click()
        await page.wait_for_url(f"{ui.base}/ui/models/digits/compare?a={v1}&b={v2}")
        accuracy = page.locator("tr", has_text="metric accuracy")
        await expect(accuracy).to_have_class("differs")
        await expect(accuracy.locator("td")).to_have_text(["0.91", "0.95"])
        await screenshot(page, "model-compare")

        # a version's page: where it came from, as GET …/lineage says
        await page.goto(f"{ui.base}/ui/models/digits")
        await page.get_by_role("link", name=f"v{v1}", exact=True).click()
        await page.wait_for_url(f"{ui.base}/ui/models/digits/versions/{v1}")
        lineage = page.locator("table.lineage")
        await expect(lineage.locator("tr", has_text="Code")).to_contain_text("https://example.com/ml.git")
        await expect(lineage.locator("tr", has_text="Job")).to_contain_text("queue team-a")
        await screenshot(page, "model-version-lineage")
