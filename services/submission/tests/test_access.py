"""Team tokens, the admin token and queue configuration over HTTP, against a real nats-server.

Every refusal is shown: 401 for a token the service does not know, 403 problem+json naming what
was refused for a token that may not do it.
"""

from __future__ import annotations

import json
import uuid

import nats
import pytest

from trainyard_contracts import QueueConfig
from trainyard_submission.tokens import bucket_name

from .conftest import AUTH, TOKEN

pytestmark = pytest.mark.service

PROBLEM = "application/problem+json"


def spec(queue: str | None = None, **extra) -> str:
    data = {"name": "t", "command": ["true"], **extra}
    if queue:
        data["queue"] = queue
    return json.dumps(data)


async def new_token(api, team: str | None = None, admin: bool = False) -> tuple[str, dict]:
    """A token; a team's queue is configured first (a token for a team with no queue is refused)."""
    if team is not None:
        assert (await api.put(f"/v1/queues/{team}", json={}, headers=AUTH)).status_code in (200, 201)
    body = {"admin": True} if admin else {"team": team, "description": f"{team} CI"}
    resp = await api.post("/v1/tokens", json=body, headers=AUTH)
    assert resp.status_code == 201, resp.text
    data = resp.json()
    return data["token"], {"Authorization": f"Bearer {data['token']}"}


def assert_forbidden(resp, *words: str) -> dict:
    assert resp.status_code == 403, resp.text
    assert resp.headers["content-type"] == PROBLEM
    problem = resp.json()
    assert problem["status"] == 403 and problem["title"] == "forbidden"
    for word in words:
        assert word in problem["detail"], (word, problem)
    return problem


async def test_a_team_token_acts_only_on_its_own_queue(api):
    _, alpha = await new_token(api, "alpha")
    _, beta = await new_token(api, "beta")

    mine = await api.post("/v1/jobs", content=spec("alpha"), headers=alpha)
    assert mine.status_code == 201, mine.text
    assert mine.json()["job"]["submitted_by"].startswith("api:alpha:")
    # no queue in the spec: the team's queue, not "default"
    implicit = await api.post("/v1/jobs", content=spec(), headers=alpha)
    assert implicit.status_code == 201 and implicit.json()["job"]["spec"]["queue"] == "alpha"
    theirs = (await api.post("/v1/jobs", content=spec("beta"), headers=beta)).json()["job_id"]

    problem = assert_forbidden(await api.post("/v1/jobs", content=spec("beta"), headers=alpha), "'beta'")
    assert problem["queue"] == "beta" and problem["errors"][0]["field"] == "queue"
    assert_forbidden(await api.post("/v1/jobs", content=spec("default"), headers=alpha), "'default'")
    assert_forbidden(await api.get(f"/v1/jobs/{theirs}", headers=alpha), "read job", theirs, "'beta'")
    assert_forbidden(await api.post(f"/v1/jobs/{theirs}/cancel", headers=alpha), "cancel job", theirs)
    assert_forbidden(await api.get(f"/v1/jobs/{theirs}/logs", headers=alpha), "logs of job", theirs)
    assert_forbidden(await api.get("/v1/jobs?queue=beta", headers=alpha), "list queue 'beta'")

    listed = {row["queue"] for row in (await api.get("/v1/jobs", headers=alpha)).json()["jobs"]}
    assert listed == {"alpha"}
    assert (await api.get(f"/v1/jobs/{mine.json()['job_id']}", headers=alpha)).status_code == 200
    assert (await api.post(f"/v1/jobs/{mine.json()['job_id']}/cancel", headers=alpha)).status_code == 202
    # the admin (the bootstrap token) acts on every queue and sees every job
    every = {row["queue"] for row in (await api.get("/v1/jobs", headers=AUTH)).json()["jobs"]}
    assert every == {"alpha", "beta"}
    assert (await api.post(f"/v1/jobs/{theirs}/cancel", headers=AUTH)).status_code == 202


async def test_a_team_token_cannot_use_admin_routes(api):
    _, alpha = await new_token(api, "alpha")
    for method, url, body in [
        ("PUT", "/v1/queues/alpha", {"weight": 100}),
        ("DELETE", "/v1/queues/default", None),
        ("POST", "/v1/tokens", {"team": "alpha"}),
        ("GET", "/v1/tokens", None),
        ("DELETE", "/v1/tokens/0123456789ab", None),
        ("GET", "/v1/dlq", None),
        ("POST", "/v1/dlq/1/replay", None),
    ]:
        resp = await api.request(method, url, json=body, headers=alpha)
        assert_forbidden(resp, "only an admin token", url)
    # reading the queues and the models is open to every team
    assert (await api.get("/v1/queues", headers=alpha)).status_code == 200
    assert (await api.get("/v1/models", headers=alpha)).status_code == 200


async def test_unknown_wrong_and_revoked_tokens_are_401(api, js):
    token, alpha = await new_token(api, "alpha")
    assert (await api.get("/v1/jobs", headers=alpha)).status_code == 200
    token_id = token.split("_")[1]
    forged = f"ty_{token_id}_{'A' * 43}"  # the right id, another secret
    for bad in [forged, "ty_0123456789ab_" + "B" * 43, "not-a-token", TOKEN + "x", ""]:
        resp = await api.get("/v1/jobs", headers={"Authorization": f"Bearer {bad}"})
        assert resp.status_code == 401 and resp.headers["content-type"] == PROBLEM, bad
        assert resp.headers["www-authenticate"] == "Bearer"

    listed = (await api.get("/v1/tokens", headers=AUTH)).json()["tokens"]
    assert [(t["token_id"], t["team"], t["admin"]) for t in listed] == [(token_id, "alpha", False)]
    assert token not in json.dumps(listed) and "secret" not in json.dumps(listed)
    # the bucket keeps the digest only
    prefix = api.app.state.trainyard["subjects"].prefix
    kv = await js.key_value(bucket_name(prefix))
    stored = (await kv.get(token_id)).value.decode()
    assert token.split("_", 2)[2] not in stored and "secret_sha256" in stored

    assert (await api.delete(f"/v1/tokens/{token_id}", headers=AUTH)).status_code == 204
    assert (await api.get("/v1/jobs", headers=alpha)).status_code == 401
    assert (await api.delete(f"/v1/tokens/{token_id}", headers=AUTH)).status_code == 404
    assert (await api.get("/v1/tokens", headers=AUTH)).json()["tokens"] == []


async def test_a_created_admin_token_is_an_admin(api):
    _, other_admin = await new_token(api, admin=True)
    resp = await api.put("/v1/queues/gamma", json={"weight": 2}, headers=other_admin)
    assert resp.status_code == 201, resp.text
    bad = await api.post("/v1/tokens", json={"team": "alpha", "admin": True}, headers=AUTH)
    assert bad.status_code == 422 and bad.headers["content-type"] == PROBLEM


async def test_queue_configuration_is_validated_and_written_by_compare_and_set(api, js):
    queues = (await api.get("/v1/queues", headers=AUTH)).json()["queues"]
    assert [(q["name"], q["allow_shell"], q["revision"]) for q in queues] == [("default", True, 0)]

    body = {
        "weight": 3,
        "quota": {"cpu": 8, "memory": 16384, "gpu": 1},
        "cohort": "research",
        "borrowing_limit": {"cpu": 4},
        "allow_shell": False,
    }
    created = await api.put("/v1/queues/vision", json=body, headers=AUTH)
    assert created.status_code == 201, created.text
    rev = created.json()["revision"]
    assert rev > 0 and created.json()["quota"]["gpu"] == 1
    prefix = api.app.state.trainyard["subjects"]
    kv = await js.key_value(prefix.buckets.queues)
    stored = QueueConfig.model_validate_json((await kv.get("vision")).value)
    assert stored.name == "vision" and stored.cohort == "research" and stored.borrowing_limit.cpu == 4

    for bad, field in [
        ({"weight": -1}, "body.weight"),
        ({"weight": "heavy"}, "body.weight"),
        ({"quota": {"cpu": -2}}, "body.quota.cpu"),
        ({"quota": {"gpus": 1}}, "body.quota.gpus"),
        ({"allow_shel": True}, "body.allow_shel"),
        ({"name": "other"}, "name"),
    ]:
        resp = await api.put("/v1/queues/vision", json=bad, headers=AUTH)
        assert resp.status_code == 422 and resp.headers["content-type"] == PROBLEM, (bad, resp.text)
        assert field in {e["field"] for e in resp.json()["errors"]}, (bad, resp.json())
    bad_name = await api.put("/v1/queues/Not_A_Queue", json={}, headers=AUTH)
    assert bad_name.status_code == 422

    stale = await api.put("/v1/queues/vision", json={"weight": 9}, headers={**AUTH, "If-Match": str(rev + 7)})
    assert stale.status_code == 412 and stale.json()["revision"] == rev
    again = await api.put("/v1/queues/vision", json={"weight": 9}, headers={**AUTH, "If-Match": str(rev)})
    assert again.status_code == 200 and again.json()["revision"] > rev and again.json()["weight"] == 9
    exists = await api.put("/v1/queues/vision", json={}, headers={**AUTH, "If-Match": "0"})
    assert exists.status_code == 412

    names = [q["name"] for q in (await api.get("/v1/queues", headers=AUTH)).json()["queues"]]
    assert names == ["default", "vision"]
    assert (await api.delete("/v1/queues/vision", headers=AUTH)).status_code == 204
    assert (await api.delete("/v1/queues/vision", headers=AUTH)).status_code == 404
    assert (await api.get("/v1/queues/vision", headers=AUTH)).status_code == 404
    # written again after a delete: created anew
    assert (await api.put("/v1/queues/vision", json={}, headers=AUTH)).status_code == 201


async def test_shell_is_refused_by_a_queue_that_does_not_allow_it_on_http_and_on_the_bus(api, nats_server):
    shell_spec = {"name": "sh", "command": ["echo hi | tr a-z A-Z"], "shell": True}
    # the built-in default queue allows shell: the demo keeps working
    ok = await api.post("/v1/jobs", json=shell_spec, headers=AUTH)
    assert ok.status_code == 201, ok.text
    assert (await api.put("/v1/queues/locked", json={"allow_shell": False}, headers=AUTH)).status_code == 201

    assert (await api.put("/v1/queues/plain", json={}, headers=AUTH)).status_code == 201
    for queue in ["locked", "plain"]:  # a queue configured without allow_shell refuses it
        resp = await api.post("/v1/jobs", json={**shell_spec, "queue": queue}, headers=AUTH)
        problem = assert_forbidden(resp, f"queue {queue!r} does not allow shell")
        assert problem["queue"] == queue and problem["errors"][0]["field"] == "shell"
    # argv in the same queue is fine
    argv = await api.post(
        "/v1/jobs", json={"name": "a", "command": ["echo", "hi"], "queue": "locked"}, headers=AUTH
    )
    assert argv.status_code == 201

    subjects = api.app.state.trainyard["subjects"]
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox)
    await js.publish(
        subjects.intake_submit,
        json.dumps({**shell_spec, "queue": "locked"}).encode(),
        # an identified publisher (the admin): the queue's shell rule still holds on the bus
        headers={"Nats-Msg-Id": uuid.uuid4().hex, "Trainyard-Reply-To": inbox, "Trainyard-Token": TOKEN},
    )
    reply = json.loads((await replies.next_msg(timeout=10)).data)
    assert reply["accepted"] is False
    assert reply["errors"][0]["field"] == "shell" and "'locked'" in reply["errors"][0]["message"]
    sub = await js.subscribe(subjects.job_events(reply["job_id"]), ordered_consumer=True)
    event = json.loads((await sub.next_msg(timeout=5)).data)
    assert event["type"] == "rejected" and event["errors"][0]["field"] == "shell"
    await nc.drain()

    # the admin tightens the default queue: shell is refused there too
    assert (await api.put("/v1/queues/default", json={"allow_shell": False}, headers=AUTH)).status_code == 201
    assert_forbidden(await api.post("/v1/jobs", json=shell_spec, headers=AUTH), "'default'")
