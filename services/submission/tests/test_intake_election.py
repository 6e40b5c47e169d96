"""An intake message that meets a bucket without a leader is redelivered with a growing delay and
answered once the bucket is back, not dead-lettered (issue 14: jobs lost in a node loss).

A clustered bucket electing a leader answers nothing, and nats-py raises NoStreamResponseError;
deleting the idempotency bucket's stream on this single real nats-server gives the intake the same
error from the same call, for as long as the test chooses. The bucket is then created again with
its config, as a new leader would bring it back."""

from __future__ import annotations

import json
import uuid

import nats
import pytest

from trainyard_shared.testing.helpers import eventually

from .conftest import AUTH

pytestmark = pytest.mark.service

SPEC = b"name: hello\ncommand: ['python', 'train.py']\n"


async def test_an_intake_message_waits_out_a_leaderless_bucket_and_is_answered(api, nats_server):
    subjects = api.app.state.trainyard["subjects"]
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    try:
        bucket_stream = f"KV_{subjects.buckets.idempotency}"
        config = (await js.stream_info(bucket_stream)).config
        await js.delete_stream(bucket_stream)
        inbox = nc.new_inbox()
        replies = await nc.subscribe(inbox)
        headers = {"Nats-Msg-Id": f"ext-{uuid.uuid4().hex}", "Trainyard-Reply-To": inbox}
        await js.publish(subjects.intake_submit, SPEC, headers=headers)

        async def delivered(times: int):
            info = await js.consumer_info(subjects.streams.intake, "submission-intake")
            return info if info.delivered.consumer_seq >= times else None

        await eventually(lambda: delivered(3), 30, "three deliveries of the intake message")
        await js.add_stream(config)

        reply = json.loads((await replies.next_msg(timeout=20)).data)
        assert reply["accepted"] and not reply["duplicate"]
        record = (await api.get(f"/v1/jobs/{reply['job_id']}", headers=AUTH)).json()
        assert record["state"] == "submitted" and record["submitted_by"] == "bus"
        letters = (await api.get("/v1/dlq?service=submission", headers=AUTH)).json()["letters"]
        assert letters == []
        # waited out with growing delays, not redelivered at once until the budget ran out
        info = await js.consumer_info(subjects.streams.intake, "submission-intake")
        assert info.config.max_deliver > 5 and info.num_ack_pending == 0
    finally:
        await nc.drain()
