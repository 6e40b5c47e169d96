"""Sign-in, CSRF, the jobs table and a team's view, in a real browser against the submission app
(no scheduler: the jobs are records in the bucket)."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from trainyard_contracts import JobState, LogChunk, LogLine, ModelVersionRecord, QueueConfig
from trainyard_contracts._time import utcnow

from .conftest import ADMIN_TOKEN, screenshot, ui_stack
from .seeding import record, seed

pytestmark = [pytest.mark.ui, pytest.mark.service, pytest.mark.asyncio(loop_scope="session")]


async def test_sign_in_refuses_a_bad_token_and_lets_a_good_one_in(context, nats_server, prefix, tmp_path):
    async with ui_stack(nats_server, prefix, tmp_path) as ui:
        page = await ui.page(context)
        # a page asked for without a session: the sign-in page, which comes back to it after
        await page.goto(f"{ui.base}/ui/executors")
        assert "/ui/sign-in" in page.url and "next=%2Fui%2Fexecutors" in page.url
        await page.fill("#token", "not-a-token")
        async with page.expect_response(lambda r: r.request.method == "POST") as answer:
            await page.click("button[type=submit]")
        assert (await answer.value).status == 401
        await page.get_by_role("alert").filter(has_text="not valid").wait_for()
        assert not [c for c in await context.cookies() if c["name"] == "trainyard_session"]
        await screenshot(page, "sign-in-refused")

        await page.fill("#token", ADMIN_TOKEN)
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{ui.base}/ui/executors")
        assert await page.inner_text("h1") == "Executors"
        session = next(c for c in await context.cookies() if c["name"] == "trainyard_session")
        assert session["httpOnly"] and session["sameSite"] == "Strict" and session["path"] == "/ui"
        assert ADMIN_TOKEN not in await page.content()  # the token is never written into a page
        await screenshot(page, "signed-in-executors")

        await page.get_by_role("button", name="Sign out").click()
        await page.wait_for_url("**/ui/sign-in")
        await page.goto(f"{ui.base}/ui/jobs")
        assert "/ui/sign-in" in page.url


async def test_a_cross_site_form_without_the_csrf_token_is_refused(context, nats_server, prefix, tmp_path):
    async with ui_stack(nats_server, prefix, tmp_path) as ui:
        (job,) = await seed(ui.runtime.service.store, [record(1, state=JobState.QUEUED)])
        page = await ui.page(context)
        await ui.sign_in(page)

        # another page on this machine (same site, other origin: the cookie goes along) posts
        # the cancel form without the session's token
        evil = ui.base.rsplit(":", 1)[0] + ":9/evil.html"
        form = (
            f'<form id="f" method="post" action="{ui.base}/ui/jobs/{job.job_id}/cancel">'
            '<input name="csrf" value="guessed"></form><script>document.getElementById("f").submit()</script>'
        )
        await page.route(evil, lambda route: route.fulfill(status=200, content_type="text/html", body=form))
        async with page.expect_response(f"{ui.base}/ui/jobs/{job.job_id}/cancel") as answer:
            await page.goto(evil)
        assert (await answer.value).status == 403
        await page.get_by_role("alert").filter(has_text="another site").wait_for()
        await screenshot(page, "csrf-refused")

        # from the UI's own origin, still without the token: refused too
        same_origin = await page.request.post(
            f"{ui.base}/ui/jobs/{job.job_id}/cancel", form={"csrf": "guessed"}, headers={"Origin": ui.base}
        )
        assert same_origin.status == 403 and "CSRF token" in await same_origin.text()
        assert not (await ui.runtime.service.get(job.job_id)).cancel_requested

        # the page's own button carries the token: that one is taken
        await page.goto(f"{ui.base}/ui/jobs/{job.job_id}")
        await page.get_by_role("button", name="Cancel job").click()
        await page.wait_for_url(f"{ui.base}/ui/jobs/{job.job_id}")
        assert (await ui.runtime.service.get(job.job_id)).cancel_requested


async def test_the_jobs_table_filters_and_pages_through_1000_jobs(context, nats_server, prefix, tmp_path):
    async with ui_stack(nats_server, prefix, tmp_path) as ui:
        jobs = await seed(ui.runtime.service.store, [record(i) for i in range(1000)])
        newest_first = [j.job_id for j in reversed(jobs)]
        page = await ui.page(context)
        await ui.sign_in(page)

        async def shown_ids() -> list[str]:
            return await page.locator("table.jobs tbody code.id").all_inner_texts()

        # every page, by its Next link, 100 rows each: all 1000 jobs once, newest first
        await page.goto(f"{ui.base}/ui/jobs?size=100")
        seen = await shown_ids()
        await screenshot(page, "jobs-first-page")
        for _ in range(9):
            await page.get_by_role("link", name="Next →").click()
            await page.wait_for_load_state()
            seen += await shown_ids()
        assert seen == newest_first
        assert await page.locator(".pager .off", has_text="Next").count() == 1  # the last page
        await page.get_by_role("link", name="← Previous").click()
        assert await shown_ids() == newest_first[800:900]

        # filters, by the form: state, then a label and the name, oldest first
        await page.goto(f"{ui.base}/ui/jobs")
        await page.select_option("select[name=state]", "failed")
        await page.get_by_role("button", name="Filter").click()
        await page.wait_for_url("**state=failed**")
        states = await page.locator("table.jobs tbody .state").all_inner_texts()
        assert len(states) == 50 and set(states) == {"failed"}
        await screenshot(page, "jobs-failed")

        await page.goto(f"{ui.base}/ui/jobs?label=sweep%3Dlr&order=oldest&size=500")
        assert await shown_ids() == [j.job_id for j in jobs if j.spec.labels["sweep"] == "lr"]
        await page.goto(f"{ui.base}/ui/jobs?name=train-0042")
        assert await shown_ids() == [jobs[42].job_id]
        await page.goto(f"{ui.base}/ui/jobs?label=nolabel")
        assert "expected key=value" in await page.get_by_role("alert").inner_text()

        # on a phone: the table still reads, the less needed columns folded away
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.goto(f"{ui.base}/ui/jobs?size=20")
        assert not await page.locator("th.wide").first.is_visible()
        await screenshot(page, "jobs-phone")


async def test_a_team_token_sees_only_its_own_queue(context, nats_server, prefix, tmp_path):
    async with ui_stack(nats_server, prefix, tmp_path) as ui:
        for team in ("team-a", "team-b"):
            await ui.runtime.queues.put(QueueConfig(name=team))
        _, team_a_token = await ui.runtime.tokens.create("team-a", admin=False)
        ours = [record(i, queue="team-a", name=f"ours-{i}") for i in range(3)]
        theirs = [record(i, queue="team-b", name=f"theirs-{i}") for i in range(3)]
        await seed(ui.runtime.service.store, ours + theirs)
        page = await ui.page(context)
        await ui.sign_in(page, team_a_token)
        assert "team team-a" in await page.locator(".who").inner_text()

        names = await page.locator("table.jobs tbody td:first-child a").all_inner_texts()
        assert sorted(names) == ["ours-0", "ours-1", "ours-2"]
        await screenshot(page, "team-jobs")

        response = await page.goto(f"{ui.base}/ui/jobs/{theirs[0].job_id}")
        assert response.status == 403 and "theirs-0" not in await page.content()
        response = await page.goto(f"{ui.base}/ui/jobs?queue=team-b")
        assert response.status == 403 and "theirs-" not in await page.content()
        response = await page.goto(f"{ui.base}/ui/jobs/{theirs[0].job_id}/logs.txt")
        assert response.status == 403
        # a team's own job reads as for the admin
        response = await page.goto(f"{ui.base}/ui/jobs/{ours[0].job_id}")
        assert response.status == 200 and await page.inner_text("h1") == "ours-0"
        await page.set_viewport_size({"width": 390, "height": 844})
        await screenshot(page, "job-phone")


async def test_submit_again_makes_one_new_job_with_the_same_spec(context, nats_server, prefix, tmp_path):
    async with ui_stack(nats_server, prefix, tmp_path) as ui:
        (old,) = await seed(ui.runtime.service.store, [record(7, state=JobState.FAILED)])
        page = await ui.page(context)
        await ui.sign_in(page)
        await page.goto(f"{ui.base}/ui/jobs/{old.job_id}")
        form = page.locator("form[action$='/resubmit']")
        fields = {
            name: await form.locator(f"input[name={name}]").get_attribute("value")
            for name in ("csrf", "nonce")
        }
        await form.get_by_role("button", name="Submit again").click()
        await page.wait_for_url(f"{ui.base}/ui/jobs/**")
        new_id = page.url.rsplit("/", 1)[1]
        assert new_id != old.job_id and await page.inner_text("h1") == old.spec.name
        new = await ui.runtime.service.get(new_id)
        assert new.spec.command == old.spec.command and new.spec.labels == old.spec.labels
        await screenshot(page, "job-submitted-again")

        # the same rendered form posted again (a double click, a resent POST): the same job
        again = await page.request.post(
            f"{ui.base}/ui/jobs/{old.job_id}/resubmit",
            form=fields,
            headers={"Origin": ui.base},
            max_redirects=0,
        )
        assert again.status == 303 and again.headers["location"] == f"/ui/jobs/{new_id}"


async def test_a_revoked_token_is_signed_out_at_once(context, nats_server, prefix, tmp_path):
    async with ui_stack(nats_server, prefix, tmp_path) as ui:
        await ui.runtime.queues.put(QueueConfig(name="team-a"))
        created, token = await ui.runtime.tokens.create("team-a", admin=False)
        page = await ui.page(context)
        await ui.sign_in(page, token)
        await page.goto(f"{ui.base}/ui/queues")
        assert await page.inner_text("h1") == "Queues"
        await ui.runtime.tokens.revoke(created.token_id)
        await page.reload()
        assert "/ui/sign-in?next=%2Fui%2Fqueues" in page.url


async def test_keyboard_alone_signs_in_and_opens_a_job_in_dark_mode(browser, nats_server, prefix, tmp_path):
    async with ui_stack(nats_server, prefix, tmp_path) as ui:
        (job,) = await seed(ui.runtime.service.store, [record(3, state=JobState.SUCCEEDED)])
        dark = await browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="dark")
        try:
            page = await ui.page(dark)
            await page.goto(f"{ui.base}/ui/jobs")
            # the sign-in form has the focus: type the token, Enter
            await page.keyboard.type(ADMIN_TOKEN)
            await page.keyboard.press("Enter")
            await page.wait_for_url(f"{ui.base}/ui/jobs")

            async def focused() -> str:
                return await page.evaluate("document.activeElement.textContent.trim()")

            await page.keyboard.press("Tab")
            assert await focused() == "Skip to content"
            for _ in range(40):  # through the header and the filters to the first job's link
                await page.keyboard.press("Tab")
                if await focused() == job.spec.name:
                    break
            assert await focused() == job.spec.name
            await page.keyboard.press("Enter")
            await page.wait_for_url(f"{ui.base}/ui/jobs/{job.job_id}")
            background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
            assert background == "rgb(15, 20, 25)"  # the dark palette, from the system's preference
            await screenshot(page, "job-dark")
        finally:
            await dark.close()


async def test_a_jobs_output_is_shown_as_text_never_as_markup(context, nats_server, prefix, tmp_path):
    async with ui_stack(nats_server, prefix, tmp_path) as ui:
        (job,) = await seed(ui.runtime.service.store, [record(5, state=JobState.SUCCEEDED)])
        hostile = '<img src="x" id="pwned"><script>document.title="pwned"</script>'
        chunk = LogChunk(
            job_id=job.job_id,
            attempt=1,
            seq=0,
            lines=[
                LogLine(stream="stdout", text=hostile, time=utcnow()),
                LogLine(stream="stderr", text="a warning", time=utcnow()),
            ],
        )
        subjects = ui.app.state.trainyard["subjects"]
        await ui.runtime.js.publish(subjects.log(job.job_id, 1), chunk.model_dump_json().encode())
        page = await ui.page(context)
        await ui.sign_in(page)
        await page.goto(f"{ui.base}/ui/jobs/{job.job_id}")
        await expect(page.locator("#log-end")).to_contain_text("ended: succeeded")
        await expect(page.locator("#log-lines")).to_contain_text(hostile)
        assert await page.locator("#pwned").count() == 0 and await page.title() != "pwned"
        await expect(page.locator("#log-lines .stderr")).to_have_text("a warning\n")
        download = await page.request.get(f"{ui.base}/ui/jobs/{job.job_id}/logs.txt")
        assert download.status == 200 and await download.text() == f"{hostile}\na warning\n"
        await screenshot(page, "job-hostile-output")


async def test_models_show_a_teams_own_versions_and_link_to_their_jobs(
    context, nats_server, prefix, tmp_path
):
    async with ui_stack(nats_server, prefix, tmp_path) as ui:
        await ui.runtime.queues.put(QueueConfig(name="team-a"))
        _, team_a_token = await ui.runtime.tokens.create("team-a", admin=False)
        (job,) = await seed(ui.runtime.service.store, [record(1, queue="team-a", state=JobState.SUCCEEDED)])
        models = await ui.runtime.js.key_value(ui.app.state.trainyard["subjects"].buckets.models)
        ours = ModelVersionRecord(
            name="digits", version=3, job_id=job.job_id, queue="team-a", metrics={"accuracy": 0.97222}
        )
        theirs = ModelVersionRecord(name="secret-model", version=1, job_id="0000000000000", queue="team-b")
        for version in (ours, theirs):
            await models.put(version.key, version.model_dump_json().encode())
        page = await ui.page(context)
        await ui.sign_in(page, team_a_token)
        await page.get_by_role("link", name="Models").click()
        await page.wait_for_url("**/ui/models")
        rows = page.locator("table.models tbody tr")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_contain_text("digits")
        await expect(rows.first).to_contain_text("accuracy=0.9722")
        assert "secret-model" not in await page.content()
        await screenshot(page, "models-team")
        await rows.first.get_by_role("link", name=job.job_id).click()
        await page.wait_for_url(f"{ui.base}/ui/jobs/{job.job_id}")
