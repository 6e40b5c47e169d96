"""The front door (HTTP and the bus intake) holds the line: bounded refusals, the same rules at both
doors, and what one team may see of another's models.

The real submission service runs in this process against the session's real nats-server.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import nats
import pytest

from trainyard_shared.settings import CommonSettings
from trainyard_submission.app import create_app
from trainyard_submission.settings import SubmissionSettings

pytestmark = [pytest.mark.security, pytest.mark.service]

ADMIN = "front-door-admin-token"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def doors(nats_server, prefix, tmp_path):
    """(http client, nats connection, subjects) of one real submission service."""
    common = CommonSettings(nats_url=nats_server.url, prefix=prefix, data_dir=tmp_path / "d")
    app = create_app(common, SubmissionSettings(token=ADMIN))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=60) as client:
            nc = await nats.connect(nats_server.url)
            yield client, nc, app.state.trainyard["subjects"]
            await nc.drain()


async def over_the_bus(nc, subjects, body: bytes, headers: dict[str, str] | None = None) -> dict[str, Any]:
    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox)
    await nc.jetstream().publish(
        subjects.intake_submit,
        body,
        headers={"Nats-Msg-Id": uuid.uuid4().hex, "Trainyard-Reply-To": inbox, **(headers or {})},
    )
    reply: dict[str, Any] = json.loads((await replies.next_msg(timeout=30)).data)
    await replies.unsubscribe()
    return reply


async def first_event(nc, subjects, job_id: str) -> dict[str, Any]:
    events = await nc.jetstream().subscribe(subjects.job_events(job_id), ordered_consumer=True)
    event: dict[str, Any] = json.loads((await events.next_msg(timeout=10)).data)
    await events.unsubscribe()
    return event


# ------------------------------------------------------------------ errors are capped


async def test_250000_bad_items_get_the_first_100_errors_and_a_count_at_both_doors(doors):
    client, nc, subjects = doors
    body = json.dumps({"name": "many", "command": [0] * 250_000}).encode()
    assert len(body) < 1024 * 1024

    resp = await client.post(
        "/v1/jobs", content=body, headers={**auth(ADMIN), "content-type": "application/json"}
    )
    assert resp.status_code == 422
    assert len(resp.content) < 64 * 1024, len(resp.content)
    errors = resp.json()["errors"]
    assert len(errors) == 101
    assert errors[0]["field"] == "command.0"
    assert errors[-1] == {"field": "(more)", "message": "249900 more errors not shown (the first 100 are)"}

    reply = await over_the_bus(nc, subjects, body)
    assert reply["accepted"] is False and reply["errors"] == errors
    rejected = await first_event(nc, subjects, reply["job_id"])
    assert rejected["type"] == "rejected" and rejected["errors"] == errors


async def test_a_huge_field_name_or_value_is_clipped_in_the_refusal(doors):
    client, nc, subjects = doors
    body = json.dumps({"name": "n" * 600_000, "command": ["true"], "x" * 300_000: 1}).encode()
    resp = await client.post(
        "/v1/jobs", content=body, headers={**auth(ADMIN), "content-type": "application/json"}
    )
    assert resp.status_code == 422
    assert len(resp.content) < 16 * 1024, len(resp.content)
    reply = await over_the_bus(nc, subjects, body)
    assert reply["accepted"] is False and {e["field"][:5] for e in reply["errors"]} == {"name", "xxxxx"}


# ------------------------------------------------------------------ priority and bus identity


async def team_token(client, team: str) -> str:
    """A team's token; its queue is configured first (a token for a team with no queue is refused)."""
    made = await client.put(f"/v1/queues/{team}", json={}, headers=auth(ADMIN))
    assert made.status_code in (200, 201), made.text
    resp = await client.post("/v1/tokens", json={"team": team}, headers=auth(ADMIN))
    assert resp.status_code == 201, resp.text
    return str(resp.json()["token"])


def spec(**fields: Any) -> bytes:
    return json.dumps({"name": "p", "command": ["true"], **fields}).encode()


async def test_a_team_cannot_raise_its_priority_over_its_queues_maximum(doors):
    client, _, _ = doors
    alpha = await team_token(client, "alpha")
    resp = await client.post("/v1/jobs", content=spec(priority=1000), headers=auth(alpha))
    assert resp.status_code == 403, resp.text
    problem = resp.json()
    assert problem["queue"] == "alpha" and [e["field"] for e in problem["errors"]] == ["priority"]
    assert "up to 0" in problem["detail"]
    # lowering its own priority is always fine, and so is the queue's maximum
    assert (await client.post("/v1/jobs", content=spec(priority=-5), headers=auth(alpha))).status_code == 201
    put = await client.put("/v1/queues/alpha", json={"max_priority": 10}, headers=auth(ADMIN))
    assert put.status_code == 200, put.text  # replaces the configuration team_token wrote
    assert (await client.post("/v1/jobs", content=spec(priority=10), headers=auth(alpha))).status_code == 201
    over = await client.post("/v1/jobs", content=spec(priority=11), headers=auth(alpha))
    assert over.status_code == 403 and over.json()["errors"][0]["field"] == "priority"
    # the cap is the queue's: the admin submitting into it is held to it too
    admin_over = await client.post("/v1/jobs", content=spec(queue="alpha", priority=11), headers=auth(ADMIN))
    assert admin_over.status_code == 403


async def test_the_bus_intake_applies_the_publishers_identity_and_its_queues_limits(doors):
    client, nc, subjects = doors
    alpha = await team_token(client, "alpha")

    def refused(reply: dict[str, Any], field: str) -> bool:
        return reply["accepted"] is False and [e["field"] for e in reply["errors"]] == [field]

    # no identity: only a queue that allows anonymous bus submissions (the built-in default does)
    anonymous = await over_the_bus(nc, subjects, spec(queue="alpha"))
    assert refused(anonymous, "queue"), anonymous
    rejected = await first_event(nc, subjects, anonymous["job_id"])
    assert rejected["type"] == "rejected" and rejected["errors"] == anonymous["errors"]
    assert (await over_the_bus(nc, subjects, spec()))["accepted"] is True
    assert refused(await over_the_bus(nc, subjects, spec(priority=1000)), "priority")

    # a team's token: its queue only, and its queue's priority cap
    token = {"Trainyard-Token": alpha}
    own = await over_the_bus(nc, subjects, spec(), token)  # no queue given: the team's
    assert own["accepted"] is True, own
    record = (await client.get(f"/v1/jobs/{own['job_id']}", headers=auth(ADMIN))).json()
    assert record["spec"]["queue"] == "alpha" and record["submitted_by"].startswith("bus:alpha:")
    assert refused(await over_the_bus(nc, subjects, spec(queue="beta"), token), "queue")
    assert refused(await over_the_bus(nc, subjects, spec(priority=1000), token), "priority")

    # a token that is named but not known is refused, not taken as anonymous
    for bad in ("not-a-token", alpha + "x", ADMIN + "x"):
        assert refused(await over_the_bus(nc, subjects, spec(), {"Trainyard-Token": bad}), "Trainyard-Token")
    listed = (await client.get("/v1/jobs?limit=100", headers=auth(ADMIN))).json()["jobs"]
    assert len(listed) == 2  # the two accepted ones; nothing else was created


# ------------------------------------------------------------------ credentials and models per team

CREDENTIAL = "ghp_" + uuid.uuid4().hex


async def test_a_source_credential_is_never_in_the_records_repo_nor_in_any_model_listing(doors):
    client, nc, subjects = doors
    alpha = await team_token(client, "alpha")
    # a public address literal: the installation's git rule checks the host (no DNS here)
    repo = f"https://{CREDENTIAL}@93.184.216.34/alpha/private.git"
    source = {"repo": repo, "commit": "a" * 40}
    resp = await client.post("/v1/jobs", content=spec(source=source), headers=auth(alpha))
    assert resp.status_code == 201, resp.text
    assert CREDENTIAL not in resp.text
    kv = await nc.jetstream().key_value(subjects.buckets.jobs)
    stored = json.loads((await kv.get(resp.json()["job_id"])).value)
    # never in repo; nor in the record at all: the job secrets bucket keeps it for the executor
    assert stored["spec"]["source"]["repo"] == "https://93.184.216.34/alpha/private.git"
    assert stored["spec"]["source"]["credential"] == "***" and stored["secrets_stored"] is True
    secrets = await nc.jetstream().key_value(subjects.buckets.secrets)
    assert json.loads((await secrets.get(resp.json()["job_id"])).value)["credential"] == CREDENTIAL


async def test_a_team_lists_only_its_own_queues_models_and_no_credential(doors):
    client, nc, subjects = doors
    alpha = await team_token(client, "alpha")
    models = await nc.jetstream().key_value(subjects.buckets.models)
    versions = [
        {
            "name": "a-model",
            "version": 1,
            "job_id": "j-alpha",
            "queue": "alpha",
            "git_repo": "https://h/a.git",
        },
        {
            "name": "b-model",
            "version": 1,
            "job_id": "j-beta",
            "queue": "beta",
            "git_repo": f"https://{CREDENTIAL}@git.example.org/beta/private.git",
        },
        # registered before versions named their queue (and before credentials left the URL)
        {
            "name": "old-model",
            "version": 1,
            "job_id": "j-old",
            "git_repo": f"https://oauth2:{CREDENTIAL}@git.example.org/x.git",
        },
    ]
    for v in versions:
        await models.put(f"{v['name']}.{v['version']}", json.dumps(v).encode())

    as_alpha = await client.get("/v1/models", headers=auth(alpha))
    assert as_alpha.status_code == 200
    assert [m["name"] for m in as_alpha.json()["models"]] == ["a-model"]
    assert (await client.get("/v1/models?name=b-model", headers=auth(alpha))).json()["models"] == []
    as_admin = await client.get("/v1/models", headers=auth(ADMIN))
    assert sorted(m["name"] for m in as_admin.json()["models"]) == ["a-model", "b-model", "old-model"]
    assert CREDENTIAL not in as_admin.text and CREDENTIAL not in as_alpha.text
    repos = {m["name"]: m["git_repo"] for m in as_admin.json()["models"]}
    assert repos["b-model"] == "https://git.example.org/beta/private.git"
