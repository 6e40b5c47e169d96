"""A secret env value reaches the job and nothing else: submission, scheduler and executor run in
this process on a real nats-server, the job is a real local process.

The job checks that it got the value (exit 0 only then); afterwards the test reads every event on
the jobs stream, every log record of every service (caplog), and the API's answers: the value is
in none of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys

import httpx
import pytest

from trainyard_executor.app import create_app as executor_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_scheduler.testkit import quick_scheduler
from trainyard_shared.testing.helpers import Bus, common_settings, running
from trainyard_submission.app import create_app as submission_app
from trainyard_submission.settings import SubmissionSettings

pytestmark = [pytest.mark.service, pytest.mark.local]

SECRET = "pw-8c1e7d0f-secret"
# the job compares a digest, so the command itself does not carry the secret
CHECK = (
    "import hashlib, os, sys; "
    "got = hashlib.sha256(os.environ.get('DB_PASSWORD', '').encode()).hexdigest(); "
    f"sys.exit(0 if got == {hashlib.sha256(SECRET.encode()).hexdigest()!r} else 3)"
)


async def test_the_job_gets_its_secret_and_no_event_log_or_answer_shows_it(
    nats_server, prefix, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG)
    common = common_settings(nats_server.url, prefix, tmp_path / "data")
    api = submission_app(common, SubmissionSettings(token="admin"))
    scheduler = quick_scheduler(common)
    executor = executor_app(common, ExecutorSettings(id="exec-s", cpu=2, memory=2048, heartbeat_seconds=0.5))
    auth = {"Authorization": "Bearer admin"}
    spec = {
        "name": "uses-a-secret",
        "command": [sys.executable, "-c", CHECK],
        "env": {"DB_PASSWORD": SECRET, "MODE": "test"},
        "secret_env": ["DB_PASSWORD"],
    }
    async with Bus(nats_server.url, prefix) as bus, api.router.lifespan_context(api):
        async with running(scheduler), running(executor):
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api")
            async with client:
                submitted = await client.post("/v1/jobs", json=spec, headers=auth)
                assert submitted.status_code == 201, submitted.text
                job_id = submitted.json()["job_id"]
                record = await bus.wait_state(job_id, "succeeded", "failed", timeout=60)
                answers = [
                    submitted.text,
                    (await client.get(f"/v1/jobs/{job_id}", headers=auth)).text,
                    (await client.get("/v1/jobs", headers=auth)).text,
                    (await client.get(f"/v1/jobs/{job_id}/logs", headers=auth)).text,
                ]
        events = await bus.messages(f"{bus.subjects.prefix}.job.>", bus.subjects.streams.jobs)
    assert record.state.value == "succeeded", record.reason  # exit 3 would mean the value never arrived
    assert json.loads(answers[1])["spec"]["env"] == {"DB_PASSWORD": "***", "MODE": "test"}
    assert {json.loads(m.data)["type"] for m in events} >= {"submitted", "queued", "running", "succeeded"}
    for text in [*answers, *(m.data.decode() for m in events), caplog.text]:
        assert SECRET not in text
    for log_record in caplog.records:
        assert SECRET not in json.dumps(log_record.__dict__, default=str)
