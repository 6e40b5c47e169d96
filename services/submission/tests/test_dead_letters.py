"""Dead letters over the API: listed with their reason, replayed onto their subject."""

from __future__ import annotations

import nats
import pytest

from .conftest import AUTH

pytestmark = pytest.mark.service


async def test_list_and_replay_a_dead_letter(api, nats_server):
    subjects = api.app.state.trainyard["subjects"]
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    ack = await js.publish(
        subjects.dlq("scheduler"),
        b'{"broken": true}',
        headers={
            "Trainyard-Reason": "invalid message: nope",
            "Trainyard-Service": "scheduler",
            "Trainyard-Original-Subject": subjects.job("j0000001", "queued"),
            "Trainyard-Deliveries": "1",
        },
    )
    letters = (await api.get("/v1/dlq", headers=AUTH)).json()["letters"]
    assert [(x["seq"], x["service"], x["reason"]) for x in letters] == [
        (ack.seq, "scheduler", "invalid message: nope")
    ]
    assert letters[0]["body"] == '{"broken": true}'

    watcher = await js.subscribe(subjects.job("j0000001", "queued"), ordered_consumer=True)
    resp = await api.post(f"/v1/dlq/{ack.seq}/replay", headers=AUTH)
    assert resp.status_code == 200
    replayed = await watcher.next_msg(timeout=5)
    assert replayed.data == b'{"broken": true}'
    assert replayed.headers["Trainyard-Replayed-From"] == str(ack.seq)
    assert (await api.get("/v1/dlq", headers=AUTH)).json()["letters"] == []
    assert (await api.post(f"/v1/dlq/{ack.seq}/replay", headers=AUTH)).status_code == 404
    await nc.drain()
