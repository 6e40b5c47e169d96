"""Which fact frees an attempt's room (docs/scheduling.md, "Room"): the record saying the attempt
ended frees it at once, before the executor's next heartbeat; a preempted attempt that is still
stopping (its checkpoint) holds it until its process has ended. A real scheduler and a real
executor running real processes against a real nats-server. The executor beats every 30 s here,
so a placement the heartbeat would have allowed cannot be told apart from one the record allowed
unless it comes before that beat; each test checks that the heartbeat stored in the bucket is still
the one from before."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from trainyard_contracts import ExecutorHeartbeat, JobSpec, JobState
from trainyard_executor.app import create_app as executor_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_scheduler.testkit import quick_scheduler

from .harness import Bus, eventually, running

pytestmark = [pytest.mark.service, pytest.mark.local]
PY = sys.executable
SLOW_BEAT = 30.0

# runs until the test creates <dir>/release; on SIGTERM it "checkpoints" (says so, then waits for
# <dir>/checkpoint-done) before it exits
HOLD = """
import os, pathlib, signal, sys, time
d = pathlib.Path(sys.argv[1]); me = os.environ["TRAINYARD_JOB_ID"]
def checkpoint(*_):
    (d / f"{me}.checkpointing").touch()
    while not (d / "checkpoint-done").exists():
        time.sleep(0.05)
    sys.exit(0)
signal.signal(signal.SIGTERM, checkpoint)
(d / f"{me}.started").touch()
while not (d / "release").exists():
    time.sleep(0.05)
"""


def apps(common, executor_id: str, cpu: int):
    scheduler = quick_scheduler(common)
    executor = executor_app(
        common,
        ExecutorSettings(
            id=executor_id,
            cpu=cpu,
            memory=4096,
            gpu=0,
            heartbeat_seconds=SLOW_BEAT,
            lease_seconds=3 * SLOW_BEAT,
        ),
    )
    return scheduler, executor


async def stored_beat(bus: Bus, executor_id: str) -> ExecutorHeartbeat:
    kv = await bus.js.key_value(bus.subjects.buckets.executors)
    return ExecutorHeartbeat.model_validate_json((await kv.get(executor_id)).value)


async def test_room_is_credited_when_the_record_says_the_attempt_ended(common, bus, tmp_path: Path):
    """12 `sleep 2` jobs ran in waves with about 1 s idle between them: a finished job's room came
    back only with the executor's next heartbeat. Now the job waiting behind it is placed as soon
    as the record says the first one ended, while the stored heartbeat still lists it."""
    scheduler, executor = apps(common, "exec-room", cpu=1)
    async with running(scheduler), running(executor):
        first = await bus.submit(JobSpec(name="first", command=[PY, "-c", HOLD, str(tmp_path)]))
        await bus.wait_state(first, "running")

        async def started():
            return (tmp_path / f"{first}.started").exists()

        await eventually(started, 30, "the first job's process started")
        await executor.context.get("executor").runtime.core.beat()  # a heartbeat listing it
        assert [r.job_id for r in (await stored_beat(bus, "exec-room")).running] == [first]
        second = await bus.submit(JobSpec(name="second", command=["true"]))
        await bus.wait_state(second, "queued")

        (tmp_path / "release").touch()
        await bus.wait_state(first, "succeeded")
        await bus.wait_state(second, "scheduled", "running", "succeeded", timeout=SLOW_BEAT * 2 / 3)
        beat = await stored_beat(bus, "exec-room")
        assert [r.job_id for r in beat.running] == [first], "placed on a newer heartbeat, not the record"


async def test_a_preempted_attempt_holds_its_room_while_it_checkpoints(common, bus, tmp_path: Path):
    """Three 1-CPU jobs on a 2-CPU executor: the high-priority one used to start 0.01 s after the
    preemption, while the victim (younger than one heartbeat) still ran its checkpoint. Now it is
    not placed while the victim checkpoints, over several planning passes, and starts once the
    victim's process has ended."""
    scheduler, executor = apps(common, "exec-pre", cpu=2)
    hold = [PY, "-c", HOLD, str(tmp_path)]
    async with running(scheduler), running(executor):
        low = [
            await bus.submit(JobSpec(name=f"low{i}", command=hold, priority=0, preemptible=True))
            for i in range(2)
        ]
        for job_id in low:
            await bus.wait_state(job_id, "running")

        async def started():  # their SIGTERM handlers are in place
            return all((tmp_path / f"{j}.started").exists() for j in low)

        await eventually(started, 30, "both low-priority jobs started")
        assert (await stored_beat(bus, "exec-pre")).running == []  # both younger than a heartbeat
        high = await bus.submit(JobSpec(name="high", command=["true"], priority=10))

        async def checkpointing():
            return [j for j in low if (tmp_path / f"{j}.checkpointing").exists()]

        victim = (await eventually(checkpointing, 30, "a victim checkpointing"))[0]
        core = scheduler.context.get("runtime").get().core
        seen: set = set()

        async def passes_since():
            seen.add(core.decided_at)
            return len(seen) >= 4  # three planning passes after the victim began its checkpoint

        await eventually(passes_since, 30, "planning passes while the victim checkpoints")
        record = await bus.record(high)
        assert record.state == JobState.QUEUED, f"placed while the victim still ran: {record.state}"
        assert (await stored_beat(bus, "exec-pre")).running == []

        (tmp_path / "checkpoint-done").touch()  # the victim ends; the other low job runs on
        await bus.wait_state(high, "scheduled", "running", "succeeded", timeout=SLOW_BEAT * 2 / 3)
        stopped = await bus.record(victim)
        assert stopped.attempt == 2 and not stopped.attempts[0].stopping  # the executor said it ended
        (tmp_path / "release").touch()
