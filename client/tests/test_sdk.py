"""The SDK against ``fake_api`` (conftest): a real HTTP server on 127.0.0.1 answering with the
submission service's documented shapes. It stands in for the real service, which is written and
tested separately; these tests prove the client's requests and its parsing of every response."""

from __future__ import annotations

import json

import pytest

from trainyard_client import TrainyardClient, TrainyardError, TrainyardUnavailable
from trainyard_client.sdk import default_token, parse_sse
from trainyard_contracts import JobRecord, JobState

pytestmark = pytest.mark.service

SPEC = "name: digits\ncommand: [python, train.py]\noutputs: {model: digits-classifier}\n"


@pytest.fixture
def client(fake_api):
    with TrainyardClient(fake_api.url, fake_api.token, timeout=10) as c:
        yield c


def test_submit_sends_yaml_token_and_key_and_parses_the_result(fake_api, client):
    result = client.submit(SPEC, idempotency_key="k-1")
    assert result.state == JobState.QUEUED
    assert not result.duplicate
    assert isinstance(result.job, JobRecord)
    assert result.job.job_id == result.job_id
    assert result.job.spec.outputs.model == "digits-classifier"
    sent = fake_api.requests[-1]
    assert sent["method"] == "POST" and sent["path"] == "/v1/jobs"
    assert sent["headers"]["Authorization"] == f"Bearer {fake_api.token}"
    assert sent["headers"]["Content-Type"] == "application/yaml"
    assert sent["headers"]["Idempotency-Key"] == "k-1"
    assert sent["body"] == SPEC.encode()

    again = client.submit(SPEC, idempotency_key="k-1")
    assert again.duplicate and again.job_id == result.job_id


def test_submit_a_mapping_sends_json(fake_api, client):
    result = client.submit({"name": "m", "command": ["true"]})
    sent = fake_api.requests[-1]
    assert sent["headers"]["Content-Type"] == "application/json"
    assert json.loads(sent["body"]) == {"name": "m", "command": ["true"]}
    assert result.job.spec.name == "m"
    assert "Idempotency-Key" not in sent["headers"]


def test_422_becomes_trainyard_error_with_field_errors(client):
    with pytest.raises(TrainyardError) as caught:
        client.submit("name: x\ncommand: python train.py\nresources: {gpus: 1}\n")
    error = caught.value
    assert error.status == 422
    assert error.title == "invalid job spec"
    assert {e.field for e in error.errors} == {"command", "resources.gpus"}
    assert all(e.message for e in error.errors)


def test_get_list_and_404(fake_api, client):
    job_id = client.submit(SPEC).job_id
    record = client.get(job_id)
    assert record.job_id == job_id and record.state == JobState.SCHEDULED
    assert record.executor_id == "local-fake"

    rows = client.list(state="scheduled", queue="default", limit=5)
    assert [r.job_id for r in rows] == [job_id]
    assert rows[0].name == "digits" and rows[0].state == JobState.SCHEDULED
    assert fake_api.requests[-1]["query"] == {"state": "scheduled", "queue": "default", "limit": "5"}
    assert client.list(state=JobState.FAILED) == []

    with pytest.raises(TrainyardError) as caught:
        client.get("nosuchjob1")
    assert caught.value.status == 404 and caught.value.title == "no such job"
    assert isinstance(caught.value, TrainyardError) and not isinstance(caught.value, TrainyardUnavailable)


def test_cancel_and_409_when_finished(fake_api, client):
    job_id = client.submit(SPEC).job_id
    record = client.cancel(job_id)
    assert record.cancel_requested
    assert fake_api.requests[-1]["method"] == "POST"
    assert fake_api.requests[-1]["path"] == f"/v1/jobs/{job_id}/cancel"
    client.wait(job_id, poll=0)
    with pytest.raises(TrainyardError) as caught:
        client.cancel(job_id)
    assert caught.value.status == 409


def test_logs_text_and_attempt_param(fake_api, client):
    job_id = client.submit(SPEC).job_id
    text = client.logs(job_id, attempt=1)
    assert text.splitlines() == ["epoch 1 loss=0.50", "warning: [not markup]", "accuracy=0.97"]
    assert fake_api.requests[-1]["query"] == {"follow": "false", "attempt": "1"}


def test_follow_logs_parses_server_sent_events_to_the_end(fake_api, client):
    job_id = client.submit(SPEC).job_id
    events = list(client.follow_logs(job_id))
    assert [e.event for e in events] == ["log", "log", "log", "end"]
    assert [e.text for e in events[:3]] == ["epoch 1 loss=0.50", "warning: [not markup]", "accuracy=0.97"]
    assert [e.stream for e in events[:3]] == ["stdout", "stderr", "stdout"]
    assert all(e.attempt == 1 and e.time is not None for e in events[:3])
    assert events[-1].state == "succeeded"
    assert fake_api.requests[-1]["query"] == {"follow": "true"}
    assert fake_api.requests[-1]["headers"]["Accept"] == "text/event-stream"


def test_models_parse_and_filter(fake_api, client):
    versions = client.models("digits-classifier")
    assert fake_api.requests[-1]["query"] == {"name": "digits-classifier"}
    assert [(v.name, v.version) for v in versions] == [("digits-classifier", 3)]
    assert versions[0].metrics == {"accuracy": 0.9722}
    assert versions[0].git_commit.startswith("0123456789")
    assert len(client.models()) == 2


def test_wait_reports_each_state_and_returns_the_terminal_record(client):
    job_id = client.submit(SPEC).job_id
    seen: list[str] = []
    record = client.wait(job_id, poll=0, on_change=lambda r: seen.append(r.state.value))
    assert record.state == JobState.SUCCEEDED and record.exit_code == 0
    assert seen == ["scheduled", "running", "succeeded"]
    model = client.wait_for_model(job_id, timeout=10, poll=0)
    assert model is not None and model.name == "digits-classifier" and model.version == 3


def test_wait_times_out(fake_api, client):
    job_id = client.submit(SPEC).job_id
    fake_api.jobs[job_id].script = []  # stays queued for good
    with pytest.raises(TimeoutError):
        client.wait(job_id, timeout=0, poll=0)


def test_wrong_token_is_401(fake_api):
    with TrainyardClient(fake_api.url, "wrong") as c, pytest.raises(TrainyardError) as caught:
        c.list()
    assert caught.value.status == 401


def test_token_from_the_data_dir_file(fake_api, tmp_path, monkeypatch):
    monkeypatch.delenv("TRAINYARD_TOKEN", raising=False)
    monkeypatch.setenv("TRAINYARD_DATA_DIR", str(tmp_path))
    assert default_token() is None
    (tmp_path / "api-token").write_text(fake_api.token + "\n")
    monkeypatch.setenv("TRAINYARD_URL", fake_api.url)
    with TrainyardClient() as c:
        assert c.list() == []
    assert fake_api.requests[-1]["headers"]["Authorization"] == f"Bearer {fake_api.token}"
    monkeypatch.setenv("TRAINYARD_TOKEN", "from-env")
    assert default_token() == "from-env"


def test_unreachable_server(closed_port_url):
    with TrainyardClient(closed_port_url, "t") as c:
        with pytest.raises(TrainyardUnavailable) as caught:
            c.get("job000001")
        assert closed_port_url in str(caught.value)
        assert not c.health()
        with pytest.raises(TrainyardUnavailable):
            list(c.follow_logs("job000001"))


@pytest.mark.unit
def test_parse_sse_handles_comments_multiline_data_and_missing_final_blank():
    lines = [": ping", "", "event: log", "data: a", "data: b", "", "id: 7", "data: plain", ""]
    lines += ["event: end", "data: failed"]
    assert list(parse_sse(iter(lines))) == [("log", "a\nb"), ("message", "plain"), ("end", "failed")]


def test_wait_with_model_means_what_the_cli_wait_means(client):
    """The fake registers the model one read after success: plain wait() returns before it."""
    first = client.wait(client.submit(SPEC).job_id, poll=0)
    assert first.state == JobState.SUCCEEDED and first.model is None
    record = client.wait(client.submit(SPEC).job_id, poll=0, model=True)
    assert record.model is not None and record.model.name == "digits-classifier"
