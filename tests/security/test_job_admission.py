"""Only what the submission service admitted is placed: a job record written by another service
that may write job records (the registry, for its model reference; docs/security.md) never runs.

Submission, scheduler and executor run in this process against a real nats-server started with the
deployed users (deploy/nats), each connected as its own user; the submission service and the
scheduler hold the admission key, the executor and the registry do not. The forger is a plain
nats-py client logged in as the registry's user: what its stolen password can do. (An executor's
user may not write job records at all: tests/security/test_executor_reports.py.)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from trainyard_contracts import JobRecord, JobSpec, Subjects, lifecycle, new_job_id
from trainyard_contracts._time import utcnow
from trainyard_scheduler.admission import NOT_ADMITTED
from trainyard_shared.testing.helpers import eventually

from ..deploy.natsconf import inbox_of, job_path_as_users, password_for, provisioned, secured_server

pytestmark = [pytest.mark.security, pytest.mark.service, pytest.mark.local]

S = Subjects("trainyard")
TOKEN = "admission-test-token-0123456789"
KEY = "admission-test-key-not-for-executors"
EXECUTOR = "exec-auth"
FORGER = "registry"


@contextlib.asynccontextmanager
async def stack(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    with secured_server(tmp_path / "store") as server:
        await provisioned(server)
        forger = await nats.connect(
            server.url, user=FORGER, password=password_for(FORGER), inbox_prefix=inbox_of(FORGER)
        )
        try:
            async with job_path_as_users(
                server, tmp_path / "data", executor_id=EXECUTOR, token=TOKEN, key=KEY
            ) as http:
                yield http, await forger.jetstream().key_value(S.buckets.jobs)
        finally:
            await forger.close()


async def record_of(jobs_kv: Any, job_id: str) -> tuple[JobRecord, int]:
    entry = await jobs_kv.get(job_id)
    return JobRecord.model_validate_json(entry.value), entry.revision


async def ended(jobs_kv: Any, job_id: str, timeout: float = 60) -> JobRecord:
    async def probe() -> JobRecord | None:
        record, _ = await record_of(jobs_kv, job_id)
        return record if record.state.terminal else None

    return await eventually(probe, timeout, f"job {job_id} ended")


def marker_job(marker: Path) -> list[str]:
    return [sys.executable, "-c", f"open({str(marker)!r}, 'w').write('ran')"]


async def test_a_record_written_with_registry_credentials_is_cancelled_and_never_runs(tmp_path):
    marker = tmp_path / "forged-ran"
    async with stack(tmp_path) as (http, jobs_kv):
        # an admitted job runs: the signature the submission service wrote verifies
        response = await http.post(
            "/v1/jobs", json={"name": "fine", "command": [sys.executable, "-c", "pass"]}
        )
        assert response.status_code == 201, response.text
        fine = await ended(jobs_kv, response.json()["job_id"])
        assert (
            fine.state.value == "succeeded" and fine.admission and fine.admission.startswith("hmac-sha256:")
        )

        # the registry's user may write the jobs bucket: it creates a job past admission, at a
        # priority no queue allows, and with a signature of its own making
        spec = JobSpec(name="forged", command=marker_job(marker), priority=1000)
        unsigned = lifecycle.new_record(new_job_id(), spec, utcnow(), "admin")
        guessed = unsigned.model_copy(update={"job_id": new_job_id(), "admission": "hmac-sha256:" + "0" * 64})
        for forged in (unsigned, guessed):
            await jobs_kv.create(forged.job_id, forged.model_dump_json().encode())
        for forged in (unsigned, guessed):
            record = await ended(jobs_kv, forged.job_id)
            assert record.state.value == "cancelled" and record.reason == NOT_ADMITTED
            assert record.executor_id is None
            assert all(a.scheduled_at is None and a.started_at is None for a in record.attempts)
    assert not marker.exists()


async def test_a_waiting_jobs_spec_rewritten_after_admission_is_cancelled_not_run(tmp_path):
    marker = tmp_path / "rewritten-ran"
    async with stack(tmp_path) as (http, jobs_kv):
        # the only CPU is held, so the second job waits in the queue
        blocker = (
            await http.post(
                "/v1/jobs", json={"name": "hold", "command": ["sleep", "60"], "resources": {"cpu": 1}}
            )
        ).json()["job_id"]
        waiting = (
            await http.post("/v1/jobs", json={"name": "wait", "command": ["true"], "resources": {"cpu": 1}})
        ).json()["job_id"]

        async def queued_behind_the_blocker() -> JobRecord | None:
            held, _ = await record_of(jobs_kv, blocker)
            record, _ = await record_of(jobs_kv, waiting)
            return record if held.state.value == "running" and record.state.value == "queued" else None

        await eventually(queued_behind_the_blocker, 60, "a job queued behind a running one")
        # the forger keeps the signature and swaps the command (compare-and-set, as a service would)
        record, revision = await record_of(jobs_kv, waiting)
        rewritten = record.model_copy(
            update={"spec": record.spec.model_copy(update={"command": marker_job(marker)})}
        )
        await jobs_kv.update(waiting, rewritten.model_dump_json().encode(), last=revision)

        record = await ended(jobs_kv, waiting)
        assert record.state.value == "cancelled" and record.reason == NOT_ADMITTED
        assert (await http.post(f"/v1/jobs/{blocker}/cancel")).status_code in (200, 202)
        assert (await ended(jobs_kv, blocker)).state.value == "cancelled"
    assert not marker.exists()


async def test_an_admitted_job_with_a_secret_that_fails_once_is_retried_and_succeeds(tmp_path):
    """The signature covers what was admitted, not what moves: a retry (the scheduler writes
    ``requeued`` from the executor's report, then places the next attempt) still verifies, and so
    does a spec whose secret value lives in the secrets bucket (the record holds ``***``, as signed)."""
    first = tmp_path / "first-attempt-done"
    code = (
        "import os, sys; from pathlib import Path; p = Path(sys.argv[1]); "
        "assert os.environ['DB_PASSWORD'] == 'pw-admitted'; "
        "sys.exit(0) if p.exists() else (p.write_text('1'), sys.exit(3))"
    )
    spec = {
        "name": "retried",
        "command": [sys.executable, "-c", code, str(first)],
        "env": {"DB_PASSWORD": "pw-admitted"},
        "secret_env": ["DB_PASSWORD"],
        "retries": {"limit": 2, "backoff": 0},
    }
    async with stack(tmp_path) as (http, jobs_kv):
        response = await http.post("/v1/jobs", json=spec)
        assert response.status_code == 201, response.text
        record = await ended(jobs_kv, response.json()["job_id"])
        assert record.state.value == "succeeded", record.reason
        assert record.attempt == 2 and record.spec.env["DB_PASSWORD"] == "***"
