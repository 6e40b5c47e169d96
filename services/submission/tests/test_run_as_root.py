"""``run_as_root: true`` is accepted only by a queue with ``allow_root`` (none by default, the
built-in ``default`` queue included), on HTTP and on the bus intake, as ``shell: true`` needs
``allow_shell``. Real nats-server and submission service."""

from __future__ import annotations

import json
import uuid

import nats
import pytest

from .conftest import AUTH

pytestmark = [pytest.mark.service, pytest.mark.security]

ROOT_SPEC = {"name": "root", "image": "img:1", "command": ["apt-get", "update"], "run_as_root": True}


async def test_run_as_root_needs_a_queue_that_allows_it_on_http_and_on_the_bus(api, nats_server):
    assert (await api.put("/v1/queues/plain", json={}, headers=AUTH)).status_code == 201
    for queue in ["default", "plain"]:  # the built-in default, and a queue configured without allow_root
        resp = await api.post("/v1/jobs", json={**ROOT_SPEC, "queue": queue}, headers=AUTH)
        assert resp.status_code == 403, resp.text
        problem = resp.json()
        assert problem["detail"] == f"queue {queue!r} does not allow run_as_root: true"
        assert problem["queue"] == queue and problem["errors"][0]["field"] == "run_as_root"
        dry = await api.post("/v1/jobs/dry-run", json={**ROOT_SPEC, "queue": queue}, headers=AUTH)
        assert dry.status_code == 403, dry.text
    assert (await api.put("/v1/queues/builders", json={"allow_root": True}, headers=AUTH)).status_code == 201
    ok = await api.post("/v1/jobs", json={**ROOT_SPEC, "queue": "builders"}, headers=AUTH)
    assert ok.status_code == 201, ok.text
    assert ok.json()["job"]["spec"]["run_as_root"] is True

    subjects = api.app.state.trainyard["subjects"]
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox)
    await js.publish(
        subjects.intake_submit,
        json.dumps(ROOT_SPEC).encode(),
        headers={"Nats-Msg-Id": uuid.uuid4().hex, "Trainyard-Reply-To": inbox},
    )
    reply = json.loads((await replies.next_msg(timeout=10)).data)
    assert reply["accepted"] is False
    [error] = reply["errors"]
    assert error["field"] == "run_as_root" and "'default' does not allow run_as_root" in error["message"]
    await nc.drain()
