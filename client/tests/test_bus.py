"""``submit_over_nats`` against a real nats-server: the test plays the submission service's intake
(a stream on ``<prefix>.intake.submit``, a pull consumer, a reply to ``Trainyard-Reply-To``)."""

from __future__ import annotations

import asyncio
import contextlib
import json

import nats
import pytest
from nats.js.api import StreamConfig

from trainyard_client.bus import IntakeUnavailable, submit_over_nats

pytestmark = pytest.mark.service

SPEC = "name: hello\ncommand: [python, train.py]\n"


@pytest.fixture
async def intake(nats_server, prefix):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    subject = f"{prefix}.intake.submit"
    await js.add_stream(StreamConfig(name=f"{prefix.upper()}_INTAKE", subjects=[subject]))
    sub = await js.pull_subscribe(subject, durable="test-intake")
    yield nc, sub
    await nc.drain()


async def test_publishes_with_headers_and_returns_the_reply(nats_server, prefix, intake):
    nc, sub = intake
    task = asyncio.create_task(
        submit_over_nats(nats_server.url, SPEC, prefix=prefix, msg_id="ext-42", timeout=10)
    )
    (msg,) = await sub.fetch(1, timeout=10)
    assert msg.data == SPEC.encode()
    assert msg.headers["Nats-Msg-Id"] == "ext-42"
    reply_to = msg.headers["Trainyard-Reply-To"]
    assert reply_to.startswith("_INBOX.")
    await msg.ack()
    reply = {"accepted": True, "job_id": "job000001abcdef", "duplicate": False, "errors": []}
    await nc.publish(reply_to, json.dumps(reply).encode())
    assert await task == reply


async def test_a_fresh_msg_id_each_time_and_mappings_go_as_json(nats_server, prefix, intake):
    nc, sub = intake
    ids = []
    for _ in range(2):
        task = asyncio.create_task(
            submit_over_nats(nats_server.url, {"name": "m", "command": ["true"]}, prefix=prefix)
        )
        (msg,) = await sub.fetch(1, timeout=10)
        assert json.loads(msg.data) == {"name": "m", "command": ["true"]}
        ids.append(msg.headers["Nats-Msg-Id"])
        await msg.ack()
        rejected = {"accepted": False, "job_id": "j", "errors": [{"field": "x", "message": "y"}]}
        await nc.publish(msg.headers["Trainyard-Reply-To"], json.dumps(rejected).encode())
        assert (await task)["errors"] == [{"field": "x", "message": "y"}]
    assert ids[0] != ids[1] and all(ids)


async def test_no_intake_stream_is_a_clear_error(nats_server, prefix):
    with pytest.raises(IntakeUnavailable, match=prefix):
        await submit_over_nats(nats_server.url, SPEC, prefix=prefix, timeout=5)


async def test_no_reply_times_out(nats_server, prefix, intake):
    with pytest.raises(TimeoutError, match="no reply"):
        await submit_over_nats(nats_server.url, SPEC, prefix=prefix, timeout=0.2)


async def test_a_server_list_is_split_and_the_connection_survives_a_restart(fresh_nats_server, prefix):
    """``nats_url`` as services take it (comma-separated): the helper connects, and a server
    restart between the publish and the reply does not lose the answer (it reconnects)."""
    server = fresh_nats_server
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    subject = f"{prefix}.intake.submit"
    await js.add_stream(StreamConfig(name=f"{prefix.upper()}_INTAKE", subjects=[subject]))
    sub = await js.pull_subscribe(subject, durable="test-intake")
    task = asyncio.create_task(
        submit_over_nats(f"{server.url}, {server.url}", SPEC, prefix=prefix, msg_id="ext-7", timeout=30)
    )
    (msg,) = await sub.fetch(1, timeout=10)
    await msg.ack()
    server.stop()
    server.start()
    reply = {"accepted": True, "job_id": "job000001abcdef", "duplicate": False, "errors": []}
    # the reply is core NATS: sent again until the reconnected helper, listening again, takes it
    while not task.done():
        with contextlib.suppress(nats.errors.Error):
            await nc.publish(msg.headers["Trainyard-Reply-To"], json.dumps(reply).encode())
        await asyncio.wait({task}, timeout=0.2)
    assert await task == reply
    await nc.drain()


async def test_a_duplicate_acknowledgement_is_published_again_after_the_window(nats_server, prefix):
    """A stream that dropped the publish as a duplicate stored nothing to answer: the helper
    publishes again once the intake's 100 ms window has passed."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    subject = f"{prefix}.intake.submit"
    await js.add_stream(
        StreamConfig(name=f"{prefix.upper()}_INTAKE", subjects=[subject], duplicate_window=0.1)
    )
    sub = await js.pull_subscribe(subject, durable="test-intake")
    await js.publish(subject, b"earlier", headers={"Nats-Msg-Id": "ext-9"})
    task = asyncio.create_task(submit_over_nats(nats_server.url, SPEC, prefix=prefix, msg_id="ext-9"))
    bodies = []
    while len(bodies) < 2:
        (msg,) = await sub.fetch(1, timeout=10)
        await msg.ack()
        bodies.append(msg.data)
    assert bodies == [b"earlier", SPEC.encode()]
    reply = {"accepted": True, "job_id": "job000001abcdef", "duplicate": True, "errors": []}
    await nc.publish(msg.headers["Trainyard-Reply-To"], json.dumps(reply).encode())
    assert await task == reply
    await nc.drain()
