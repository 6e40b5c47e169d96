"""Purging a finished job (``DELETE /v1/jobs/{id}?purge=true``): its record with every revision,
its secrets, its log chunks and its idempotency entry are gone; a running job, another team's job
or a DELETE without ``purge=true`` is refused; the audit line names what went, never a value.

Submission, scheduler and executor run in this process on a real nats-server; jobs are real local
processes.
"""

from __future__ import annotations

import logging
import sys

import httpx
import pytest
from nats.js.errors import KeyNotFoundError

from trainyard_executor.app import create_app as executor_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_scheduler.testkit import quick_scheduler
from trainyard_shared.testing.helpers import Bus, common_settings, running
from trainyard_submission.app import create_app as submission_app
from trainyard_submission.settings import SubmissionSettings

pytestmark = [pytest.mark.security, pytest.mark.service, pytest.mark.local]

SECRET = "pw-31c9aa07-purge"
ADMIN = {"Authorization": "Bearer admin"}


def spec(name: str, code: str) -> dict:
    return {
        "name": name,
        "queue": "vision",
        "command": [sys.executable, "-c", code],
        "env": {"DB_PASSWORD": SECRET},
        "secret_env": ["DB_PASSWORD"],
    }


async def values_in_history(bus: Bus, bucket: str, key: str) -> list[bytes]:
    kv = await bus.js.key_value(bucket)
    try:
        return [e.value for e in await kv.history(key) if e.value]
    except KeyNotFoundError:
        return []


async def test_a_finished_job_is_purged_with_its_history_secrets_logs_and_idempotency_entry(
    nats_server, prefix, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    common = common_settings(nats_server.url, prefix, tmp_path / "data")
    api = submission_app(common, SubmissionSettings(token="admin"))
    scheduler = quick_scheduler(common)
    executor = executor_app(common, ExecutorSettings(id="exec-p", cpu=2, memory=2048, heartbeat_seconds=0.5))
    async with Bus(nats_server.url, prefix) as bus, api.router.lifespan_context(api):
        subjects = bus.subjects
        async with running(scheduler), running(executor):
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api")
            async with client:
                for queue in ("vision", "audio"):
                    # a team's queue first: a token for a team with no queue is refused
                    made = await client.put(f"/v1/queues/{queue}", json={"quota": {"cpu": 4}}, headers=ADMIN)
                    assert made.status_code == 201, made.text
                vision = {"Authorization": "Bearer " + await token(client, "vision")}
                audio = {"Authorization": "Bearer " + await token(client, "audio")}
                keyed = {**vision, "Idempotency-Key": "nightly-1"}
                done = await client.post("/v1/jobs", json=spec("done", "print('hello')"), headers=keyed)
                assert done.status_code == 201, done.text
                job_id = done.json()["job_id"]
                await bus.wait_state(job_id, "succeeded", "failed", timeout=60)
                slow = await client.post(
                    "/v1/jobs", json=spec("slow", "import time; time.sleep(60)"), headers=vision
                )
                slow_id = slow.json()["job_id"]
                await bus.wait_state(slow_id, "running", timeout=60)
                assert await bus.log_text(job_id)  # something to purge
                before = await values_in_history(bus, subjects.buckets.jobs, job_id)

                no_flag = await client.delete(f"/v1/jobs/{job_id}", headers=vision)
                other_team = await client.delete(f"/v1/jobs/{job_id}?purge=true", headers=audio)
                unfinished = await client.delete(f"/v1/jobs/{slow_id}?purge=true", headers=vision)
                purged = await client.delete(f"/v1/jobs/{job_id}?purge=true", headers=vision)
                after_get = await client.get(f"/v1/jobs/{job_id}", headers=ADMIN)
                again = await client.post("/v1/jobs", json=spec("done", "print('hello')"), headers=keyed)
                await client.post(f"/v1/jobs/{slow_id}/cancel", headers=vision)
                await bus.wait_state(slow_id, "cancelled", timeout=60)
        secrets_kv = await bus.js.key_value(subjects.buckets.secrets)
        with pytest.raises(KeyNotFoundError):
            await secrets_kv.get(job_id)
        after = await values_in_history(bus, subjects.buckets.jobs, job_id)
        logs_left = await bus.log_text(job_id)
        slow_record = await bus.record(slow_id)
        # its jobs index entries went too: its state's and its arrival entry (a job's id is in no other)
        index_info = await bus.js.stream_info(
            subjects.streams.jobindex, subjects_filter=f"{subjects.prefix}.jobidx.>"
        )
        index_left = [s for s in index_info.state.subjects or {} if job_id in s]

    assert no_flag.status_code == 400 and no_flag.json()["errors"][0]["field"] == "purge"
    assert other_team.status_code == 403, other_team.text
    assert unfinished.status_code == 409, unfinished.text
    assert slow_record is not None  # a refused purge removed nothing
    assert purged.status_code == 200, purged.text
    answer = purged.json()["purged"]
    assert answer["job_id"] == job_id and answer["record_revisions"] == len(before) >= 4
    assert answer["log_chunks"] >= 1  # (its secrets: removed when it ended, or by the purge)
    assert answer["idempotency_entry"] is True
    assert after == [] and logs_left == [] and index_left == []
    assert after_get.status_code == 404
    assert again.status_code == 201 and again.json()["job_id"] != job_id  # the key is free again
    audit = [r for r in caplog.records if r.getMessage() == "job purged"]
    assert len(audit) == 1 and audit[0].job_id == job_id and audit[0].by.startswith("api:vision:")
    assert SECRET not in caplog.text


async def token(client: httpx.AsyncClient, team: str) -> str:
    created = await client.post("/v1/tokens", json={"team": team}, headers=ADMIN)
    assert created.status_code == 201, created.text
    return created.json()["token"]
