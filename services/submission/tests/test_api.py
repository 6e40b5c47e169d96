"""The submission service over HTTP and the bus, against a real nats-server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid

import httpx
import nats
import pytest
import uvicorn

from trainyard_contracts import LogChunk, LogLine, ModelVersionRecord, lifecycle
from trainyard_contracts._time import utcnow
from trainyard_contracts.states import JobState
from trainyard_shared.natsserver import free_port
from trainyard_submission.intake import handle_intake

from .conftest import AUTH

pytestmark = pytest.mark.service

SPEC = "name: hello\ncommand: ['python', 'train.py']\nresources: {cpu: 1, memory: 256Mi}\n"


def subjects_of(api):
    return api.app.state.trainyard["subjects"]


async def stored_events(js, subjects, job_id):
    sub = await js.subscribe(subjects.job_events(job_id), ordered_consumer=True, stream=subjects.streams.jobs)
    out = []
    try:
        while True:
            out.append(await sub.next_msg(timeout=0.5))
    except nats.errors.TimeoutError:
        pass
    await sub.unsubscribe()
    return out


async def test_token_is_required(api):
    assert (await api.get("/v1/jobs")).status_code == 401
    bad = await api.get("/v1/jobs", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.headers["content-type"] == "application/problem+json"
    assert (await api.get("/healthz")).status_code == 200


async def test_submit_yaml_creates_record_and_event(api, js):
    resp = await api.post("/v1/jobs", content=SPEC, headers={**AUTH, "content-type": "application/yaml"})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    job_id = body["job_id"]
    assert body["state"] == "submitted" and body["duplicate"] is False
    got = (await api.get(f"/v1/jobs/{job_id}", headers=AUTH)).json()
    assert got["spec"]["resources"]["memory"] == 256
    events = await stored_events(js, subjects_of(api), job_id)
    assert [json.loads(m.data)["type"] for m in events] == ["submitted"]
    assert events[0].headers["Nats-Msg-Id"] == f"{job_id}:1:submitted"
    listed = (await api.get("/v1/jobs", headers=AUTH)).json()["jobs"]
    assert [row["job_id"] for row in listed] == [job_id]


async def test_invalid_spec_names_each_field_and_creates_nothing(api):
    bad = "name: x\ncommand: python train.py\nresources: {gpus: 1}\n"
    resp = await api.post("/v1/jobs", content=bad, headers=AUTH)
    assert resp.status_code == 422
    fields = {e["field"] for e in resp.json()["errors"]}
    assert fields == {"command", "resources.gpus"}
    assert (await api.get("/v1/jobs", headers=AUTH)).json()["jobs"] == []


async def test_idempotency_key_returns_the_same_job(api):
    headers = {**AUTH, "Idempotency-Key": "abc-1", "content-type": "application/json"}
    spec = json.dumps({"name": "once", "command": ["true"]})
    first = await api.post("/v1/jobs", content=spec, headers=headers)
    second = await api.post("/v1/jobs", content=spec, headers=headers)
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["job_id"] == second.json()["job_id"] and second.json()["duplicate"]
    assert len((await api.get("/v1/jobs", headers=AUTH)).json()["jobs"]) == 1


async def test_the_same_idempotency_key_with_another_spec_is_409_naming_what_differs(api):
    headers = {**AUTH, "Idempotency-Key": "abc-2", "content-type": "application/json"}
    spec = {"name": "once", "command": ["true"], "env": {"A": "1"}}
    first = await api.post("/v1/jobs", content=json.dumps(spec), headers=headers)
    assert first.status_code == 201
    other = {**spec, "command": ["false"], "resources": {"cpu": 2}}
    again = await api.post("/v1/jobs", content=json.dumps(other), headers=headers)
    assert again.status_code == 409, again.text
    body = again.json()
    assert body["differs"] == ["command", "resources"] and body["job_id"] == first.json()["job_id"]
    assert "command, resources" in body["detail"]
    same_in_yaml = await api.post(
        "/v1/jobs", content="name: once\ncommand: ['true']\nenv: {A: '1'}\n", headers=headers
    )
    assert same_in_yaml.status_code == 200 and same_in_yaml.json()["duplicate"]  # same spec, other text
    assert len((await api.get("/v1/jobs", headers=AUTH)).json()["jobs"]) == 1


async def test_source_ref_resolves_to_a_commit(api, tmp_path):
    repo = tmp_path / "repo"
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@x",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@x",
        "PATH": "/usr/bin:/bin",
    }
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
    (repo / "f").write_text("x")
    subprocess.run(["git", "-C", str(repo), "add", "f"], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "c"], check=True, env=env)
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, env=env, capture_output=True, text=True
    ).stdout.strip()
    spec = f"name: src\ncommand: ['true']\nsource: {{repo: '{repo}', ref: HEAD}}\n"
    ok = await api.post("/v1/jobs", content=spec, headers=AUTH)
    assert ok.status_code == 201 and ok.json()["job"]["spec"]["source"]["commit"] == head
    bad = spec.replace("ref: HEAD", "ref: no-such-branch")
    resp = await api.post("/v1/jobs", content=bad, headers=AUTH)
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "source.ref"


async def test_cancel_then_conflict_when_finished(api, js):
    job_id = (await api.post("/v1/jobs", content=SPEC, headers=AUTH)).json()["job_id"]
    resp = await api.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH)
    assert resp.status_code == 202 and resp.json()["cancel_requested"] is True
    types = [json.loads(m.data)["type"] for m in await stored_events(js, subjects_of(api), job_id)]
    assert types == ["submitted", "cancel_requested"]
    # finish it the way the scheduler would, then cancel again
    store = api.app.state.trainyard["service"].store
    await store.update(
        job_id, lambda r: lifecycle.finish(r, JobState.CANCELLED, utcnow(), exit_code=None, reason="x")
    )
    assert (await api.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH)).status_code == 409
    assert (await api.post("/v1/jobs/nope000000/cancel", headers=AUTH)).status_code == 404


async def test_logs_once_and_followed_to_the_end(api, js):
    job_id = (await api.post("/v1/jobs", content=SPEC, headers=AUTH)).json()["job_id"]
    subjects = subjects_of(api)
    for seq, texts in enumerate([["one", "two"], ["three"]]):
        chunk = LogChunk(
            job_id=job_id,
            attempt=1,
            seq=seq,
            lines=[LogLine(stream="stdout", text=t, time=utcnow()) for t in texts],
        )
        await js.publish(subjects.log(job_id, 1), chunk.model_dump_json().encode())
    text = (await api.get(f"/v1/jobs/{job_id}/logs", headers=AUTH)).text
    assert text.splitlines() == ["one", "two", "three"]

    store = api.app.state.trainyard["service"].store
    events: list[tuple[str, str]] = []
    # a real socket: httpx's in-process transport buffers the whole response, SSE needs a stream
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(api.app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    try:
        await eventually_started(server)
        url = f"http://127.0.0.1:{port}/v1/jobs/{job_id}/logs?follow=true"
        async with httpx.AsyncClient(timeout=20) as client, client.stream("GET", url, headers=AUTH) as resp:
            kind = None
            async for line in resp.aiter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind:
                    events.append((kind, line.split(":", 1)[1].strip()))
                    if kind == "log" and len(events) == 3:
                        # all stored lines arrived while the job runs: now it ends
                        await store.update(
                            job_id,
                            lambda r: lifecycle.finish(
                                r, JobState.CANCELLED, utcnow(), exit_code=None, reason="done"
                            ),
                        )
                    if kind == "end":
                        break
    finally:
        server.should_exit = True
        await serving
    assert [json.loads(d)["text"] for k, d in events if k == "log"] == ["one", "two", "three"]
    assert events[-1] == ("end", "cancelled")


async def eventually_started(server) -> None:
    for _ in range(200):
        if server.started:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("uvicorn did not start")


async def test_models_come_from_the_models_bucket(api, js):
    kv = await js.key_value(subjects_of(api).buckets.models)
    mv = ModelVersionRecord(name="digits", version=3, job_id="j1", metrics={"accuracy": 0.97})
    await kv.put(mv.key, mv.model_dump_json().encode())
    models = (await api.get("/v1/models?name=digits", headers=AUTH)).json()["models"]
    assert models[0]["version"] == 3 and models[0]["metrics"]["accuracy"] == 0.97


async def test_body_size_limit(api):
    resp = await api.post("/v1/jobs", content=b"x" * (65 * 1024), headers=AUTH)
    assert resp.status_code == 413


async def test_bus_intake_replies_with_job_id_dedups_and_rejects(api, nats_server):
    subjects = subjects_of(api)
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox)
    msg_id = uuid.uuid4().hex

    async def send(body: bytes, mid: str) -> dict:
        await js.publish(
            subjects.intake_submit, body, headers={"Nats-Msg-Id": mid, "Trainyard-Reply-To": inbox}
        )
        return json.loads((await replies.next_msg(timeout=10)).data)

    first = await send(SPEC.encode(), msg_id)
    assert first["accepted"] and not first["duplicate"]
    record = (await api.get(f"/v1/jobs/{first['job_id']}", headers=AUTH)).json()
    assert record["submitted_by"] == "bus"
    # the same id after the stream's dedup window has passed: the idempotency bucket still knows
    service = api.app.state.trainyard["service"]
    broker = api.app.state.trainyard["broker"]
    again = await handle_intake(service, broker, SPEC.encode(), {"Nats-Msg-Id": msg_id})
    assert again.job_id == first["job_id"] and again.duplicate
    rejected = await send(b"name: x\ncommand: 'rm -rf /'\n", uuid.uuid4().hex)
    assert not rejected["accepted"] and rejected["errors"][0]["field"] == "command"
    types = [json.loads(m.data)["type"] for m in await stored_events(js, subjects, rejected["job_id"])]
    assert types == ["rejected"]
    await nc.drain()


async def test_bus_intake_message_ids_are_each_senders_own(api, nats_server):
    """The same Nats-Msg-Id from another sender is another submission, never an answer with the
    first sender's job: anonymous senders, a token's, and the workflow service's own subject (whose
    keys name pipeline steps and sweep trials) each have their own ids."""
    subjects = subjects_of(api)
    assert (await api.put("/v1/queues/alpha", json={}, headers=AUTH)).status_code in (200, 201)
    made = await api.post("/v1/tokens", json={"team": "alpha"}, headers=AUTH)
    assert made.status_code == 201, made.text
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox)
    msg_id = uuid.uuid4().hex

    async def send(subject: str, body: bytes, **headers: str) -> dict:
        # a new Nats-Msg-Id each time: the stream's own dedup would drop a repeat unanswered
        await js.publish(
            subject,
            body,
            headers={"Nats-Msg-Id": uuid.uuid4().hex, "Trainyard-Original-Msg-Id": msg_id, **headers},
        )
        return json.loads((await replies.next_msg(timeout=10)).data)

    reply_to = {"Trainyard-Reply-To": inbox}
    anonymous = await send(subjects.intake_submit, SPEC.encode(), **reply_to)
    again = await send(subjects.intake_submit, SPEC.encode(), **reply_to)
    assert anonymous["accepted"] and again["job_id"] == anonymous["job_id"] and again["duplicate"]
    with_token = await send(
        subjects.intake_submit, SPEC.encode(), **reply_to, **{"Trainyard-Token": made.json()["token"]}
    )
    workflow = await send(subjects.intake_workflow, SPEC.encode(), **reply_to)
    for other in (with_token, workflow):
        assert other["accepted"] and not other["duplicate"], other
    assert len({anonymous["job_id"], with_token["job_id"], workflow["job_id"]}) == 3
    await nc.drain()


async def test_metrics_answer_at_once_and_docs_load_with_no_cdn(api):
    metrics = await api.get("/metrics")  # no trailing slash, as Prometheus and people ask for it
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert "# TYPE" in metrics.text
    docs = await api.get("/docs")
    assert docs.status_code == 200 and "cdn." not in docs.text and "unpkg" not in docs.text
    assets = [part.split('"')[1] for part in docs.text.split("src=")[1:] + docs.text.split("href=")[1:]]
    local = [url for url in assets if url.endswith((".js", ".css"))]
    assert len(local) == 2 and all(url.startswith("/") for url in local), assets
    for url in local:
        served = await api.get(url)
        assert served.status_code == 200 and len(served.content) > 10_000, url
