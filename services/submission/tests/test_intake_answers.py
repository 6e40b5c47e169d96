"""A foreign publisher can rely on the bus intake's answers (issue 14): a repeated message id is
answered with the job it already has, and a replayed dead letter still reaches its reply subject.
Against a real nats-server, with the submission app in-process."""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace

import nats
import pytest

from trainyard_client.bus import submit_over_nats
from trainyard_shared.deadletter import park

from .conftest import AUTH

pytestmark = pytest.mark.service

SPEC = "name: hello\ncommand: ['python', 'train.py']\n"


async def test_the_same_msg_id_again_is_answered_with_the_same_job(api, nats_server):
    """The README's retry: a publisher that gave up waiting publishes the same id again and is
    answered (not left waiting while the stream drops the repeat as a duplicate)."""
    prefix = api.app.state.trainyard["subjects"].prefix
    msg_id = f"ext-{uuid.uuid4().hex}"
    first = await submit_over_nats(nats_server.url, SPEC, prefix=prefix, msg_id=msg_id, timeout=10)
    again = await submit_over_nats(nats_server.url, SPEC, prefix=prefix, msg_id=msg_id, timeout=10)
    assert first["accepted"] and not first["duplicate"]
    assert again == {**first, "duplicate": True}
    jobs = (await api.get("/v1/jobs", headers=AUTH)).json()["jobs"]
    assert [j["job_id"] for j in jobs] == [first["job_id"]]


async def test_a_replayed_intake_letter_answers_its_publisher_with_its_first_id(api, nats_server):
    """A dead-lettered intake message keeps its reply subject and its id: replayed, the publisher
    is answered, and with the job its id already has (the replay's own message id is new)."""
    trainyard = api.app.state.trainyard
    subjects = trainyard["subjects"]
    nc = await nats.connect(nats_server.url)
    try:
        inbox = nc.new_inbox()
        replies = await nc.subscribe(inbox)
        msg_id = f"ext-{uuid.uuid4().hex}"
        first = await submit_over_nats(nats_server.url, SPEC, prefix=subjects.prefix, msg_id=msg_id)
        # the same message, failed and parked by the intake (as its consumer would)
        raw = SimpleNamespace(
            subject=subjects.intake_submit,
            data=SPEC.encode(),
            headers={"Nats-Msg-Id": msg_id, "Trainyard-Reply-To": inbox},
        )
        await park(trainyard["broker"], subjects, "submission", raw, "failed 5 times, last: boom")
        (letter,) = (await api.get("/v1/dlq?service=submission", headers=AUTH)).json()["letters"]

        assert (await api.post(f"/v1/dlq/{letter['seq']}/replay", headers=AUTH)).status_code == 200
        reply = json.loads((await replies.next_msg(timeout=10)).data)
        assert reply == {**first, "duplicate": True}
    finally:
        await nc.drain()


@pytest.mark.security
@pytest.mark.workflow
async def test_a_bus_submission_naming_step_inputs_is_refused(api, nats_server):
    """Only the workflow service (on its own intake subject) names a pipeline step's inputs: a
    digest there is a folder another run's step stored (docs/workflows.md, "Step inputs")."""
    prefix = api.app.state.trainyard["subjects"].prefix
    forged = SPEC + f"inputs: [{{path: prepare, digest: 'sha256:{'a' * 64}'}}]\npass_outputs: true\n"
    reply = await submit_over_nats(nats_server.url, forged, prefix=prefix, msg_id=f"ext-{uuid.uuid4().hex}")
    assert not reply["accepted"]
    assert sorted(e["field"] for e in reply["errors"]) == ["inputs", "pass_outputs"]
    # over HTTP too
    answer = await api.post("/v1/jobs", content=forged, headers={**AUTH, "Content-Type": "application/yaml"})
    assert answer.status_code == 422 and "inputs" in answer.text
