"""An executor writes no job record: it reports on its own subjects, the scheduler writes.

Against a real nats-server started with the deployed users (deploy/nats), each party connected as
its own user. What a stolen executor password (or a job that reached the executor's credentials)
could do before: put, delete or purge any job's record (`$KV.<prefix>_jobs.>`), rewriting other
executors' jobs, their state, outputs and spec. Now the server refuses those writes; the executor
may publish reports on ``<prefix>.exec-report.<its id>.*`` only, so the subject proves who spoke,
and the scheduler applies a report only to an attempt the record says is that executor's.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from trainyard_contracts import JobRecord, JobSpec, Subjects, lifecycle, new_job_id
from trainyard_contracts._time import utcnow
from trainyard_contracts.reports import ExecutorReport
from trainyard_shared.testing.helpers import eventually

from ..deploy.natsconf import job_path_as_users, provisioned, secured_server
from .test_nats_least_privilege import As, attempt, connected, refusal

pytestmark = [pytest.mark.security, pytest.mark.service, pytest.mark.nats_auth]

S = Subjects("trainyard")
TOKEN = "reports-test-token-0123456789"
KEY = "reports-test-admission-key"
THIEF, VICTIM = "exec-a", "exec-b"  # the thief holds exec-a's password; exec-b runs the job


def report(kind: str, job_id: str, executor: str = THIEF, **fields: Any) -> ExecutorReport:
    return ExecutorReport(
        kind=kind,  # type: ignore[arg-type]
        job_id=job_id,
        attempt=1,
        executor_id=executor,
        time=utcnow(),
        **fields,
    )


async def test_executor_credentials_cannot_put_delete_or_purge_a_job_record(tmp_path: Path):
    with secured_server(tmp_path / "store") as server:
        await provisioned(server)
        record = lifecycle.new_record(new_job_id(), JobSpec(name="theirs", command=["true"]), utcnow(), "t")
        async with connected(server, "admin") as admin:
            admin_kv = await admin.js.key_value(S.buckets.jobs)
            revision = await admin_kv.create(record.job_id, record.model_dump_json().encode())
            async with connected(server, f"executor-{THIEF}") as thief:
                kv = await thief.js.key_value(S.buckets.jobs)
                key = f"$KV.{S.buckets.jobs}.{record.job_id}"
                forged = record.model_copy(update={"reason": "rewritten by a thief"})
                await attempt(thief, kv.put(record.job_id, forged.model_dump_json().encode()), key)
                thief.errors.clear()
                await attempt(thief, kv.delete(record.job_id), key)
                thief.errors.clear()
                await attempt(thief, kv.purge(record.job_id), key)
                # reading stays: an executor watches its attempts' records
                assert (await kv.get(record.job_id)).revision == revision
            entry = await admin_kv.get(record.job_id)
            assert entry.revision == revision and JobRecord.model_validate_json(entry.value) == record


async def test_an_executor_cannot_report_on_another_executors_subject(tmp_path: Path):
    with secured_server(tmp_path / "store") as server:
        await provisioned(server)
        async with connected(server, f"executor-{THIEF}") as thief:
            job_id = new_job_id()
            theirs = S.exec_report(VICTIM, job_id)
            body = report("end", job_id, executor=VICTIM, outcome="succeeded", exit_code=0)
            await thief.nc.publish(theirs, body.model_dump_json().encode())
            await thief.nc.flush()
            await refusal(thief, theirs)
            # its own subject is allowed (and stored for the scheduler)
            ack = await thief.js.publish(S.exec_report(THIEF, job_id), b"{}", timeout=10)
            assert ack.stream == S.streams.reports


@contextlib.asynccontextmanager
async def stack(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, As, As]]:
    """Submission, scheduler and the victim's executor, each as its own user; the thief and the
    operator as plain connections."""
    with secured_server(tmp_path / "store") as server:
        await provisioned(server)
        async with (
            job_path_as_users(server, tmp_path / "data", executor_id=VICTIM, token=TOKEN, key=KEY) as http,
            connected(server, f"executor-{THIEF}") as thief,
            connected(server, "admin") as admin,
        ):
            yield http, thief, admin


async def test_a_report_about_a_job_another_executor_runs_changes_nothing(tmp_path: Path):
    async with stack(tmp_path) as (http, thief, admin):
        jobs = await admin.js.key_value(S.buckets.jobs)
        response = await http.post("/v1/jobs", json={"name": "victim", "command": ["sleep", "60"]})
        assert response.status_code == 201, response.text
        job_id = response.json()["job_id"]

        async def running_on_the_victim() -> Any:
            entry = await jobs.get(job_id)
            record = JobRecord.model_validate_json(entry.value)
            return entry if record.state.value == "running" and record.executor_id == VICTIM else None

        before = await eventually(running_on_the_victim, 60, "the job running on exec-b")
        # the thief reports on its own subject (all it may publish on): every kind about the job
        forged = [
            report("end", job_id, outcome="succeeded", exit_code=0, outputs_uri="file:///stolen"),
            report("end", job_id, outcome="failed", exit_code=1),
            report("handback", job_id, reason="given back by a thief"),
            report("cancelled", job_id, reason="cancelled by a thief"),
            report("stopped", job_id),
            report("start", job_id),
        ]
        # and one that claims to be the victim's, on the thief's own subject
        claimed = report("end", job_id, executor=VICTIM, outcome="succeeded", exit_code=0)
        for item in [*forged, claimed]:
            await thief.js.publish(
                S.exec_report(THIEF, job_id),
                item.model_dump_json().encode(),
                headers={"Nats-Msg-Id": item.msg_id() + ":thief"},
                timeout=10,
            )

        async def all_handled() -> bool:
            info = await admin.js.stream_info(S.streams.reports)
            return bool(info.state.messages == 0)  # a work queue: what the scheduler acked is gone

        await eventually(all_handled, 60, "the scheduler handled every report")
        after = await jobs.get(job_id)
        assert after.revision == before.revision and after.value == before.value
        # the one that names another executor than its subject is a dead letter, with the reason
        letters = await admin.js.subscribe(S.dlq("scheduler"), ordered_consumer=True, stream=S.streams.dlq)
        letter = await letters.next_msg(timeout=10)
        assert json.loads(letter.data)["executor_id"] == VICTIM
        assert "another executor" in letter.headers["Trainyard-Reason"]
        assert letter.headers["Trainyard-Original-Subject"] == S.exec_report(THIEF, job_id)
        # the whole path still works: the job is cancelled through the API and ends so
        assert (await http.post(f"/v1/jobs/{job_id}/cancel")).status_code in (200, 202)

        async def cancelled() -> bool:
            record = JobRecord.model_validate_json((await jobs.get(job_id)).value)
            return record.state.value == "cancelled"

        await eventually(cancelled, 60, "the job cancelled")


async def test_the_applied_word_reaches_its_own_executor_only(tmp_path: Path):
    """The scheduler tells an executor its report is applied on ``exec-applied.<id>``; another
    executor's credentials may not listen there (what it learns would be another's job ids)."""
    with secured_server(tmp_path / "store") as server:
        await provisioned(server)
        job_id = new_job_id()
        async with (
            connected(server, "scheduler") as scheduler,
            connected(server, f"executor-{VICTIM}") as victim,
            connected(server, f"executor-{THIEF}") as thief,
        ):
            heard: list[bytes] = []

            async def hear(msg: Any) -> None:
                heard.append(msg.data)

            await victim.nc.subscribe(S.exec_applied(VICTIM), cb=hear)
            await victim.nc.flush()
            await thief.nc.subscribe(S.exec_applied(VICTIM))
            await refusal(thief, S.exec_applied(VICTIM))

            await scheduler.nc.publish(S.exec_applied(VICTIM), job_id.encode())
            await scheduler.nc.flush()

            async def delivered() -> bool:
                return heard == [job_id.encode()]

            await eventually(delivered, 10, "the victim executor's wake-up")
            assert not scheduler.errors
