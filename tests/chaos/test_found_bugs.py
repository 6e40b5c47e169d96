"""Bugs the chaos run found, each as the smallest test that shows it. Each was a strict xfail with
its diagnosis until the fix landed (see git log of this file); now they are regression tests.

Services run in this process (as in tests/integration) against a real nats-server, except where a
real process is needed (SIGKILL of the executor, the submission service's own /healthz). One test
here never was a bug: see its docstring."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable

import pytest

from trainyard_client.stackprocess import free_port
from trainyard_contracts import JobSpec, JobState, JobSucceeded, lifecycle
from trainyard_contracts._time import utcnow
from trainyard_executor.testkit import quick_executor
from trainyard_scheduler.testkit import quick_scheduler
from trainyard_shared.testing.helpers import Bus, common_settings, running

from .harness import process_alive, until

pytestmark = [pytest.mark.chaos, pytest.mark.local, pytest.mark.timeout(300)]
PY = sys.executable


async def test_an_attempt_that_ends_while_the_broker_is_away_still_succeeds(
    fresh_nats_server, prefix, tmp_path, caplog
):
    caplog.set_level(logging.ERROR, logger="trainyard.executor")
    common = common_settings(fresh_nats_server.url, prefix, tmp_path / "data")
    ended = tmp_path / "ended"
    code = "import sys, time; print('working', flush=True); time.sleep(1.5); open(sys.argv[1], 'w').close()"
    async with (
        Bus(fresh_nats_server.url, prefix) as bus,
        running(quick_scheduler(common)),
        running(quick_executor(common)),
    ):
        job_id = await bus.submit(JobSpec(name="blip", command=[PY, "-c", code, str(ended)]))
        await bus.wait_state(job_id, "running")
        fresh_nats_server.stop(kill=True)
        await until(ended.exists, 30, "the job's process ended while the broker is away")

        def gave_up() -> bool:
            return any("could not run" in r.getMessage() for r in caplog.records)

        # an executor that keeps retrying never gives up: then the broker comes back after the wait
        with contextlib.suppress(AssertionError):
            await until(gave_up, 15, "the executor gave up on the attempt")
        fresh_nats_server.start()
        with contextlib.suppress(AssertionError):  # stuck in "running" is one of the two outcomes
            await bus.wait_state(job_id, "succeeded", "failed", timeout=60)
        record = await bus.record(job_id)
    assert record is not None
    assert record.state == JobState.SUCCEEDED, f"{record.state.value}: {record.reason}"


async def test_a_succeeded_event_held_by_a_registry_that_died_is_registered_soon(
    nats_server, prefix, tmp_path
):
    from trainyard_registry.app import create_app as registry_app
    from trainyard_registry.settings import RegistrySettings

    common = common_settings(nats_server.url, prefix, tmp_path / "data")
    settings = RegistrySettings(tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    (tmp_path / "mlflow").mkdir()
    outputs = tmp_path / "work" / "out"
    outputs.mkdir(parents=True)
    (outputs / "model.txt").write_text("weights")
    async with Bus(nats_server.url, prefix) as bus:
        async with running(registry_app(common, settings)):  # declares its durable consumer

            async def declared() -> bool:
                try:
                    await bus.js.consumer_info(bus.subjects.streams.jobs, "registry-succeeded")
                except Exception:
                    return False
                return True

            await until(declared, 30, "the registry's durable consumer exists")
        job_id = await bus.submit(
            JobSpec(name="held", command=["true"], outputs={"model": "held-model", "path": "out"})
        )
        kv = await bus.js.key_value(bus.subjects.buckets.jobs)
        entry = await kv.get(job_id)
        record = (await bus.record(job_id)).model_copy(update={"state": JobState.QUEUED})
        now = utcnow()
        done = lifecycle.finish(
            lifecycle.start(lifecycle.schedule(record, "exec-a", now), now),
            JobState.SUCCEEDED,
            now,
            exit_code=0,
            reason="exit code 0",
            outputs_uri=outputs.as_uri(),
        )
        await kv.update(job_id, done.model_dump_json().encode(), last=entry.revision)
        event = JobSucceeded(job_id=job_id, executor_id="exec-a", outputs_uri=outputs.as_uri())
        await bus.js.publish(event.subject(bus.subjects), event.model_dump_json().encode())
        # the registry process that dies: the event is delivered to it, and never acked
        dead = await bus.js.pull_subscribe_bind("registry-succeeded", stream=bus.subjects.streams.jobs)
        (held,) = await dead.fetch(1, timeout=10)
        assert held.subject == event.subject(bus.subjects)
        async with running(registry_app(common, settings)):  # the restarted registry

            async def registered():
                found = await bus.record(job_id)
                return found if found and found.model else None

            found = await until(registered, 60, "the held job's model registered", poll=0.5)
    assert found.model and found.model.name == "held-model"


ORPHAN_JOB = (
    "import os, sys, time\n"
    "attempt = os.environ['TRAINYARD_ATTEMPT']\n"
    "open(os.path.join(sys.argv[1], f'attempt-{attempt}'), 'w').write(str(os.getpid()))\n"
    "time.sleep(8 if attempt == '1' else 0)\n"
    "open(os.path.join(sys.argv[1], f'attempt-{attempt}.end'), 'w').close()\n"
)


async def test_after_kill_9_of_the_executor_no_two_runs_of_a_job_overlap(nats_server, prefix, tmp_path):
    """Not a bug any more: the chaos run first found the killed executor's attempt living on beside
    its requeued successor; the local backend now supervises attempts with pid files and the
    restarted executor adopts them. Either outcome is fine (attempt 1 adopted and finished, or
    stopped before attempt 2 starts); two at once is not."""
    common = common_settings(nats_server.url, prefix, tmp_path / "data")
    env = {
        **os.environ,
        "TRAINYARD_NATS_URL": nats_server.url,
        "TRAINYARD_PREFIX": prefix,
        "TRAINYARD_DATA_DIR": str(tmp_path / "data"),
        "TRAINYARD_EXECUTOR_ID": "orphan-test",
        "TRAINYARD_EXECUTOR_PORT": str(free_port("127.0.0.1")),
        "TRAINYARD_EXECUTOR_HEARTBEAT_SECONDS": "0.5",
        "TRAINYARD_EXECUTOR_LEASE_SECONDS": "3",
        "TRAINYARD_LOG_FORMAT": "text",
    }
    pids = tmp_path / "pids"
    pids.mkdir()
    log = open(tmp_path / "executor.log", "ab")
    argv = [PY, "-m", "trainyard_executor"]

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)

    first = spawn()
    second: subprocess.Popen[bytes] | None = None
    orphan = 0
    try:
        async with Bus(nats_server.url, prefix) as bus, running(quick_scheduler(common)):
            job_id = await bus.submit(JobSpec(name="orphan", command=[PY, "-c", ORPHAN_JOB, str(pids)]))
            await until((pids / "attempt-1").exists, 60, "attempt 1 running")
            orphan = int((pids / "attempt-1").read_text())
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
            second = spawn()

            async def next_step() -> str | None:
                if (pids / "attempt-2").exists():
                    return "attempt 2 started"
                record = await bus.record(job_id)
                return "ended" if record and record.state.terminal else None

            step = await until(next_step, 90, "attempt 2 started, or the job ended", poll=0.02)
            attempt_1_alive_at_attempt_2 = step == "attempt 2 started" and process_alive(orphan)
            record = await bus.wait_state(job_id, "succeeded", "failed", timeout=60)
        assert not attempt_1_alive_at_attempt_2, "attempt 2 started while attempt 1's process still ran"
        assert record.state == JobState.SUCCEEDED, record.reason
        assert (pids / f"attempt-{record.attempt}.end").exists()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=15)
                if proc.poll() is None:
                    proc.kill()
        if orphan and process_alive(orphan):
            os.kill(orphan, signal.SIGKILL)  # the job process this test started
        log.close()
        await asyncio.sleep(0)


async def test_a_succeeded_event_delivered_twice_announces_its_model_once(nats_server, prefix, tmp_path):
    from trainyard_registry.app import create_app as registry_app
    from trainyard_registry.settings import RegistrySettings

    common = common_settings(nats_server.url, prefix, tmp_path / "data")
    settings = RegistrySettings(tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    (tmp_path / "mlflow").mkdir()
    outputs = tmp_path / "work" / "out"
    outputs.mkdir(parents=True)
    (outputs / "model.txt").write_text("weights")
    async with Bus(nats_server.url, prefix) as bus, running(registry_app(common, settings)):
        job_id = await bus.submit(
            JobSpec(name="twice", command=["true"], outputs={"model": "twice-model", "path": "out"})
        )
        kv = await bus.js.key_value(bus.subjects.buckets.jobs)
        entry = await kv.get(job_id)
        record = (await bus.record(job_id)).model_copy(update={"state": JobState.QUEUED})
        now = utcnow()
        done = lifecycle.finish(
            lifecycle.start(lifecycle.schedule(record, "exec-a", now), now),
            JobState.SUCCEEDED,
            now,
            exit_code=0,
            reason="exit code 0",
            outputs_uri=outputs.as_uri(),
        )
        await kv.update(job_id, done.model_dump_json().encode(), last=entry.revision)
        # every publish of the announcement, including those the stream deduplicates
        announced = await bus.nc.subscribe(bus.subjects.job(job_id, "model_registered"))
        event = JobSucceeded(job_id=job_id, executor_id="exec-a", outputs_uri=outputs.as_uri())
        body = event.model_dump_json().encode()
        ids = []
        for delivery in ("first", "again"):
            await bus.js.publish(
                event.subject(bus.subjects), body, headers={"Nats-Msg-Id": f"{job_id}-{delivery}"}
            )
            msg = await announced.next_msg(timeout=60)
            ids.append(json.loads(msg.data)["event_id"])
    assert ids[0] == ids[1], "the same model version was announced as two different events"


async def test_the_submission_service_is_unhealthy_while_the_broker_is_gone(fresh_nats_server, tmp_path):
    import httpx

    port = free_port("127.0.0.1")
    env = {
        **os.environ,
        "TRAINYARD_NATS_URL": fresh_nats_server.url,
        "TRAINYARD_DATA_DIR": str(tmp_path),
        "TRAINYARD_SUBMISSION_PORT": str(port),
    }
    log = open(tmp_path / "submission.log", "ab")

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [PY, "-m", "trainyard_submission"], env=env, stdout=log, stderr=log, start_new_session=True
        )

    proc = spawn()
    url = f"http://127.0.0.1:{port}/healthz"

    async def status() -> int:
        async with httpx.AsyncClient(timeout=6) as http:
            try:
                return (await http.get(url)).status_code
            except httpx.HTTPError:
                return 0

    try:
        await until(lambda: _is(status(), 200), 60, "the submission service healthy")
        fresh_nats_server.stop(kill=True)
        with contextlib.suppress(AssertionError):
            await until(lambda: _is_not(status(), 200), 20, "/healthz reports the lost broker", poll=0.5)
        assert await status() != 200, "/healthz still answers 200 with the broker gone"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def _is(code: Awaitable[int], wanted: int) -> bool:
    return await code == wanted


async def _is_not(code: Awaitable[int], unwanted: int) -> bool:
    return await code not in (unwanted, 0)
