"""The triggers: serialize() round-trips; against the real stack the job trigger follows a job's
log over SSE (echoing it) to its end, and its on_kill (what Airflow 3.3's triggerer calls when a
user marks the deferred task failed) cancels the job."""

from __future__ import annotations

import asyncio
import os
import re
import signal

import httpx
import pytest
from airflow.sdk.module_loading import import_string

from trainyard_airflow.triggers import (
    TrainyardJobTrigger,
    TrainyardModelRegisteredTrigger,
    TrainyardPipelineTrigger,
)

pytestmark = pytest.mark.airflow


@pytest.mark.parametrize(
    "trigger",
    [
        TrainyardJobTrigger("j1", "conn", poll_interval=2.5, echo_logs=False, cancel_on_kill=False),
        TrainyardPipelineTrigger("r1", "conn", poll_interval=3, cancel_on_kill=False),
        TrainyardModelRegisteredTrigger("digits", "conn", poll_interval=7, after_version=4),
    ],
)
def test_serialize_round_trips(trigger):
    classpath, kwargs = trigger.serialize()
    again = import_string(classpath)(**kwargs)
    assert type(again) is type(trigger)
    assert again.serialize() == (classpath, kwargs)
    assert kwargs  # every argument is kept: a trigger rebuilt in the triggerer is the same trigger
    assert set(kwargs) == set(type(trigger).__init__.__code__.co_varnames[1 : len(kwargs) + 1])


def _submit(stack, code: str) -> str:  # type: ignore[no-untyped-def]
    spec = {"name": "trigger-test", "command": ["python3", "-c", code],
            "resources": {"cpu": 0.1, "memory": "64Mi"}}  # fmt: skip
    headers = {"Authorization": f"Bearer {stack.token}"}
    return str(httpx.post(f"{stack.url}/v1/jobs", json=spec, headers=headers, timeout=30).json()["job_id"])


def _state(stack, job_id: str) -> str:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {stack.token}"}
    return str(httpx.get(f"{stack.url}/v1/jobs/{job_id}", headers=headers, timeout=30).json()["state"])


async def _first_event(trigger, timeout: float = 180):  # type: ignore[no-untyped-def]
    async def first():  # type: ignore[no-untyped-def]
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger ended without an event")

    return await asyncio.wait_for(first(), timeout)


async def test_the_job_trigger_echoes_the_log_and_fires_with_the_end_state(stack, capfd):
    code = (
        "import time\nfor i in range(3):\n    print(f'line {i}', flush=True); time.sleep(0.3)\n"
        "raise SystemExit(2)"
    )
    job_id = _submit(stack, code)
    event = await _first_event(TrainyardJobTrigger(job_id, poll_interval=0.5))
    assert event["job_id"] == job_id and event["state"] == "failed" and event["exit_code"] == 2
    # the trigger's log (structlog, on the console here; the task's log under a triggerer)
    out = "".join(capfd.readouterr())
    echoed = re.findall(r"\[attempt 1 stdout\] (line \d)", out)
    assert echoed == ["line 0", "line 1", "line 2"]
    assert f"trainyard job {job_id} ended: failed" in out  # the SSE stream's end event


async def test_without_log_echo_the_trigger_polls_to_the_end(stack, capfd):
    job_id = _submit(stack, "print('quiet')")
    event = await _first_event(TrainyardJobTrigger(job_id, poll_interval=0.5, echo_logs=False))
    assert event["state"] == "succeeded"
    assert "quiet" not in "".join(capfd.readouterr())


async def test_on_kill_of_a_deferred_task_cancels_the_job(stack):
    job_id = _submit(stack, "import time; print('up', flush=True); time.sleep(600)")
    trigger = TrainyardJobTrigger(job_id, poll_interval=0.5)
    running = asyncio.create_task(_first_event(trigger, timeout=600))
    deadline = asyncio.get_running_loop().time() + 120
    while _state(stack, job_id) != "running":
        assert asyncio.get_running_loop().time() < deadline, "the job never started"
        await asyncio.sleep(0.2)
    # what the triggerer does on "mark failed": cancel the trigger's task, then await on_kill()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await trigger.on_kill()
    deadline = asyncio.get_running_loop().time() + 120
    while (state := _state(stack, job_id)) not in {"cancelled", "failed", "succeeded"}:
        assert asyncio.get_running_loop().time() < deadline, f"the job is still {state}"
        await asyncio.sleep(0.2)
    assert state == "cancelled"


async def test_a_job_the_sensor_follows_is_never_cancelled_by_it(stack):
    job_id = _submit(stack, "print('not mine')")
    trigger = TrainyardJobTrigger(job_id, echo_logs=False, cancel_on_kill=False)
    await trigger.on_kill()
    event = await _first_event(TrainyardJobTrigger(job_id, poll_interval=0.5, echo_logs=False))
    assert event["state"] == "succeeded"


async def test_when_the_log_stream_breaks_the_trigger_polls_through_the_apis_restart(stack, capfd):
    """The API killed while the trigger follows the log (last: the stack's supervisor restarts it
    for whatever runs after): the stream breaks, the trigger polls, through the connection errors
    of the restart, until the job (which ran on meanwhile) has ended."""
    code = "import time\nfor i in range(12):\n    print(f'tick {i}', flush=True); time.sleep(0.5)"
    job_id = _submit(stack, code)
    trigger = TrainyardJobTrigger(job_id, poll_interval=0.5)
    following = asyncio.create_task(_first_event(trigger, timeout=300))
    seen = ""
    deadline = asyncio.get_running_loop().time() + 120
    while "[attempt 1 stdout] tick 0" not in seen:  # the trigger is reading the stream
        assert asyncio.get_running_loop().time() < deadline, seen[-2000:]
        assert not following.done()
        await asyncio.sleep(0.1)
        seen += "".join(capfd.readouterr())
    os.kill(stack.api_pid, signal.SIGKILL)
    event = await following
    seen += "".join(capfd.readouterr())
    assert f"following job {job_id}'s log stopped" in seen
    assert event["job_id"] == job_id and event["state"] == "succeeded"
