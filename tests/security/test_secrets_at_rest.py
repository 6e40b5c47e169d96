"""Secret env at rest: the jobs bucket (which keeps every record's history, and which every service
reads) holds no secret value; the values live in the job secrets bucket until the job ends.

Submission, scheduler and executor run in this process on a real nats-server; the job is a real
local process that exits 0 only when it received its secret.
"""

from __future__ import annotations

import hashlib
import sys

import httpx
import nats
import pytest
from nats.js.errors import KeyNotFoundError

from trainyard_contracts import JobSpec, Subjects
from trainyard_contracts.jobsecrets import split_secrets, with_secrets
from trainyard_executor.app import create_app as executor_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_scheduler.testkit import quick_scheduler
from trainyard_shared.natsusers import users
from trainyard_shared.testing.helpers import Bus, common_settings, eventually, running
from trainyard_submission.app import create_app as submission_app
from trainyard_submission.settings import SubmissionSettings

from ..deploy.natsconf import inbox_of, password_for, provisioned, secured_server

pytestmark = [pytest.mark.security, pytest.mark.service, pytest.mark.local]

SECRET = "pw-5b7f2e19-at-rest"
CHECK = (
    "import hashlib, os, sys; "
    "got = hashlib.sha256(os.environ.get('DB_PASSWORD', '').encode()).hexdigest(); "
    f"sys.exit(0 if got == {hashlib.sha256(SECRET.encode()).hexdigest()!r} else 3)"
)
AUTH = {"Authorization": "Bearer admin"}


def secret_spec(name: str) -> dict:
    return {
        "name": name,
        "command": [sys.executable, "-c", CHECK],
        "env": {"DB_PASSWORD": SECRET, "MODE": "test"},
        "secret_env": ["DB_PASSWORD"],
    }


def test_a_spec_splits_into_a_masked_spec_and_its_secrets_and_back():
    spec = JobSpec.model_validate(
        {**secret_spec("s"), "source": {"repo": "https://tok-123@example.org/r.git", "commit": "a" * 40}}
    )
    stored, secrets = split_secrets(spec)
    assert secrets is not None
    assert SECRET not in stored.model_dump_json() and "tok-123" not in stored.model_dump_json()
    assert stored.env == {"DB_PASSWORD": "***", "MODE": "test"}
    assert with_secrets(stored, secrets) == spec
    plain = JobSpec.model_validate({"name": "p", "command": ["true"], "env": {"A": "b"}})
    assert split_secrets(plain) == (plain, None)


async def history_texts(js, bucket: str, key: str) -> list[str]:
    kv = await js.key_value(bucket)
    try:
        return [(e.value or b"").decode() for e in await kv.history(key)]
    except Exception:  # no entry at all
        return []


async def test_no_revision_of_the_record_holds_the_secret_and_it_is_gone_when_the_job_ends(
    nats_server, prefix, tmp_path
):
    common = common_settings(nats_server.url, prefix, tmp_path / "data")
    api = submission_app(common, SubmissionSettings(token="admin"))
    scheduler = quick_scheduler(common)
    executor = executor_app(common, ExecutorSettings(id="exec-r", cpu=2, memory=2048, heartbeat_seconds=0.5))
    subjects = Subjects(prefix)
    async with Bus(nats_server.url, prefix) as bus, api.router.lifespan_context(api):
        async with running(scheduler), running(executor):
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api")
            async with client:
                submitted = await client.post("/v1/jobs", json=secret_spec("at-rest"), headers=AUTH)
                assert submitted.status_code == 201, submitted.text
                job_id = submitted.json()["job_id"]
                record = await bus.wait_state(job_id, "succeeded", "failed", timeout=60)
                answers = [
                    (await client.get(f"/v1/jobs/{job_id}", headers=AUTH)).text,
                    (await client.get("/v1/jobs", headers=AUTH)).text,
                ]
                # a record written before the secrets bucket (the value in its spec) still runs
                old_id = await bus.submit(JobSpec.model_validate(secret_spec("written-before")))
                old = await bus.wait_state(old_id, "succeeded", "failed", timeout=60)
            secrets_kv = await bus.js.key_value(subjects.buckets.secrets)

            async def secrets_gone() -> bool:
                try:
                    await secrets_kv.get(job_id)
                except KeyNotFoundError:
                    return True
                return False

            await eventually(secrets_gone, 30, "the ended job's secrets removed")
        history = await history_texts(bus.js, subjects.buckets.jobs, job_id)
        secret_history = await history_texts(bus.js, subjects.buckets.secrets, job_id)
    assert record.state.value == "succeeded", record.reason  # the job got its value back
    assert old.state.value == "succeeded", old.reason
    assert record.secrets_stored
    assert len(history) >= 4  # submitted, queued, scheduled, running, succeeded (history 5)
    for text in [*history, *answers, *secret_history]:
        assert SECRET not in text


def test_only_the_submission_service_writes_and_only_executors_read_the_secrets_bucket():
    subjects = Subjects("ty")
    bucket = subjects.buckets.secrets
    perms = users(subjects, ["e1"])
    readers = {u for u, p in perms.items() if p and f"$JS.API.DIRECT.GET.KV_{bucket}.>" in p.publish}
    writers = {u for u, p in perms.items() if p and f"$KV.{bucket}.>" in p.publish}
    assert readers == {"submission", "executor-e1"}
    assert writers == {"submission", "scheduler"}  # the scheduler purges at a job's end


async def test_telemetry_cannot_read_a_jobs_secrets(tmp_path):
    """On a nats-server with the deployed users (deploy/nats): telemetry, which reads every job
    record, is refused the secrets bucket; an executor reads it."""
    subjects = Subjects("trainyard")
    with secured_server(tmp_path / "store") as server:
        await provisioned(server)
        admin = await nats.connect(server.url, user="admin", password=password_for("admin"))
        kv = await admin.jetstream().key_value(subjects.buckets.secrets)
        await kv.put("0job", b'{"env": {"A": "' + SECRET.encode() + b'"}}')
        await admin.close()
        for user, may_read in (("telemetry", False), ("executor-exec-a", True)):
            nc = await nats.connect(
                server.url, user=user, password=password_for(user), inbox_prefix=inbox_of(user)
            )
            try:
                ukv = await nc.jetstream(timeout=2.0).key_value(subjects.buckets.secrets)
                if may_read:
                    assert SECRET.encode() in (await ukv.get("0job")).value
                else:
                    with pytest.raises(Exception):  # noqa: B017 - a refused request times out
                        await ukv.get("0job")
            finally:
                await nc.close()
