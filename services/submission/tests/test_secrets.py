"""No secret leaves the submission service: not the API tokens, not env values marked secret_env.

A job is submitted with a secret; then the test reads everything the service produced: every log
record (caplog, and the same records through the JSON formatter the services use), every event on
the jobs stream, and every API answer about the job (submit, get, list, cancel, logs, dead letters).
"""

from __future__ import annotations

import io
import json
import logging

import nats
import pytest
from pythonjsonlogger.json import JsonFormatter

from trainyard_contracts import JobSpec, LogChunk, LogLine
from trainyard_contracts._time import utcnow
from trainyard_shared.logs import RedactSecrets

from .conftest import AUTH, TOKEN

pytestmark = pytest.mark.service

SECRET = "s3cr3t-value-4f9a"
SPEC = {
    "name": "with-secret",
    "command": ["python", "train.py"],
    "env": {"API_KEY": SECRET, "PLAIN": "visible"},
    "secret_env": ["API_KEY"],
}


@pytest.fixture
def json_logs():
    """The JSON log output exactly as setup_logging builds it (formatter and redaction filter)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    yield out
    root.removeHandler(handler)
    root.setLevel(old_level)


async def all_job_events(js, subjects) -> list[bytes]:
    sub = await js.subscribe(f"{subjects.prefix}.job.>", ordered_consumer=True, stream=subjects.streams.jobs)
    out = []
    try:
        while True:
            out.append((await sub.next_msg(timeout=0.5)).data)
    except nats.errors.TimeoutError:
        pass
    await sub.unsubscribe()
    return out


async def test_a_secret_env_value_is_nowhere_but_in_the_job_secrets_bucket(api, js, caplog, json_logs):
    caplog.set_level(logging.DEBUG)
    subjects = api.app.state.trainyard["subjects"]
    team = (await api.post("/v1/tokens", json={"team": "default"}, headers=AUTH)).json()["token"]
    team_auth = {"Authorization": f"Bearer {team}"}

    submitted = await api.post("/v1/jobs", json=SPEC, headers=team_auth)
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["job_id"]
    # the job itself prints its secret: the API does not pass it on
    chunk = LogChunk(
        job_id=job_id,
        attempt=1,
        seq=0,
        lines=[LogLine(stream="stdout", text=f"key={SECRET} ok", time=utcnow())],
    )
    await js.publish(subjects.log(job_id, 1), chunk.model_dump_json().encode())
    # a command holding the spec was dead-lettered: the admin reads it through the API
    await js.publish(
        subjects.dlq("executor"),
        json.dumps({"type": "start", "job_id": job_id, "spec": SPEC}).encode(),
        headers={"Trainyard-Reason": "failed 5 times", "Trainyard-Service": "executor"},
    )
    answers = [
        submitted.text,
        (await api.get(f"/v1/jobs/{job_id}", headers=team_auth)).text,
        (await api.get("/v1/jobs", headers=team_auth)).text,
        (await api.get(f"/v1/jobs/{job_id}/logs", headers=team_auth)).text,
        (await api.post(f"/v1/jobs/{job_id}/cancel", headers=team_auth)).text,
        (await api.get("/v1/dlq", headers=AUTH)).text,
        (await api.get("/v1/tokens", headers=AUTH)).text,
    ]
    events = await all_job_events(js, subjects)

    shown = json.loads(answers[1])
    assert shown["spec"]["env"] == {"API_KEY": "***", "PLAIN": "visible"}
    assert "key=*** ok" in answers[3]
    assert [json.loads(e)["type"] for e in events] == ["submitted", "cancel_requested"]
    assert json.loads(events[0])["spec"]["env"]["API_KEY"] == "***"
    for text in [*answers, *(e.decode() for e in events), caplog.text, json_logs.getvalue()]:
        assert SECRET not in text
        assert team not in text and TOKEN not in text
    for record in caplog.records:
        assert SECRET not in json.dumps(record.__dict__, default=str)

    # the record does not keep the value (jobsecrets.py); the job secrets bucket does, for the
    # executor, until the job ends
    service = api.app.state.trainyard["service"]
    stored, _ = await service.store.get(job_id)
    assert isinstance(stored.spec, JobSpec) and stored.spec.env["API_KEY"] == "***"
    assert stored.secrets_stored
    assert (await service.secrets.spec_to_run(stored)).env["API_KEY"] == SECRET


async def test_a_token_in_a_refused_request_is_not_logged(api, caplog, json_logs):
    caplog.set_level(logging.DEBUG)
    wrong = "ty_0123456789ab_" + "Z" * 43
    assert (await api.get("/v1/jobs", headers={"Authorization": f"Bearer {wrong}"})).status_code == 401
    assert (await api.get("/v1/jobs", headers=AUTH)).status_code == 200
    for text in [caplog.text, json_logs.getvalue()]:
        assert wrong not in text and TOKEN not in text


def test_secret_env_must_name_env_variables():
    from trainyard_contracts import SpecError, parse_spec

    with pytest.raises(SpecError) as info:
        parse_spec(json.dumps({"name": "x", "command": ["true"], "secret_env": ["MISSING"]}))
    assert info.value.errors[0].field == "secret_env" and "MISSING" in info.value.errors[0].message


async def test_credentials_in_the_source_url_are_masked(api, js):
    subjects = api.app.state.trainyard["subjects"]
    # a public address literal: the installation's git rule checks the host even for a pinned
    # commit, and this machine resolves no names
    repo = "https://ghp_tok3nvalue@93.184.216.34/team/model.git"
    spec = {"name": "cred", "command": ["true"], "source": {"repo": repo, "commit": "a" * 40}}
    resp = await api.post("/v1/jobs", json=spec, headers=AUTH)
    assert resp.status_code == 201, resp.text
    shown = (await api.get(f"/v1/jobs/{resp.json()['job_id']}", headers=AUTH)).json()
    # the credential is split out of the URL when the spec is read (the record's repo never holds
    # it: the registry and other teams' model listings show repo) and masked as a secret value
    assert shown["spec"]["source"]["repo"] == "https://93.184.216.34/team/model.git"
    assert shown["spec"]["source"]["credential"] == "***"
    events = b"".join(await all_job_events(js, subjects))
    assert b"ghp_tok3nvalue" not in events and "ghp_tok3nvalue" not in resp.text
    # a repo that cannot be fetched (here: the git rule refuses loopback): the error names it
    # without its credentials
    unresolvable = {"repo": "https://user:pa55word@127.0.0.1:9/r.git", "ref": "main"}
    refused = await api.post("/v1/jobs", json={**spec, "source": unresolvable}, headers=AUTH)
    assert refused.status_code == 422 and "pa55word" not in refused.text
    assert "https://***@127.0.0.1:9/r.git" in refused.text
