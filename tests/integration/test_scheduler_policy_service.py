"""The scheduler service applies the policy for real: queue quotas read from the queues bucket,
and preemption (notice with a grace period, the victim requeued as a new attempt that is not a
retry) — against a real nats-server with a real executor running real processes."""

from __future__ import annotations

import json
import sys

import pytest

from trainyard_contracts import (
    DryRunAnswer,
    DryRunRequest,
    JobSpec,
    QueueConfig,
    Quota,
    WhyAnswer,
    WhyRequest,
)
from trainyard_executor.app import create_app as executor_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_scheduler.app import create_app as scheduler_app
from trainyard_scheduler.settings import SchedulerSettings

from .harness import Bus, eventually, running

pytestmark = [pytest.mark.service, pytest.mark.local]
PY = sys.executable
SLEEP = [PY, "-c", "import time; time.sleep(60)"]


def apps(common, cpu=2):
    scheduler = scheduler_app(
        common, SchedulerSettings(tick_seconds=0.2, submitted_grace_seconds=1, preemption_grace_seconds=1)
    )
    executor = executor_app(
        common,
        ExecutorSettings(id="exec-p", cpu=cpu, memory=4096, gpu=0, heartbeat_seconds=0.5, lease_seconds=3),
    )
    return scheduler, executor


async def set_queue(bus: Bus, config: QueueConfig) -> None:
    kv = await bus.js.key_value(bus.subjects.buckets.queues)
    await kv.put(config.name, config.model_dump_json().encode())


async def test_a_queue_at_its_quota_waits_and_says_so(common, bus):
    scheduler, executor = apps(common)
    async with running(scheduler), running(executor):
        await set_queue(bus, QueueConfig(name="team-a", quota=Quota(cpu=1)))
        queues = scheduler.context.get("runtime").get().queue_view.queues

        async def seen():
            return "team-a" in queues

        await eventually(seen, 10, "the scheduler seeing the queue's configuration")
        first = await bus.submit(JobSpec(name="q1", queue="team-a", command=SLEEP, resources={"cpu": 1}))
        await bus.wait_state(first, "running")
        second = await bus.submit(JobSpec(name="q2", queue="team-a", command=["true"], resources={"cpu": 1}))

        async def why():
            reply = await bus.nc.request(
                bus.subjects.scheduler_why, WhyRequest(job_id=second).model_dump_json().encode(), timeout=5
            )
            answer = WhyAnswer.model_validate_json(reply.data)
            return answer if answer.reason and answer.reason.kind == "quota" else None

        answer = await eventually(why, 15, "the second job waiting on its queue's quota")
        assert "team-a" in answer.reason.message and answer.reason.position == 1
        # the executor has room (2 cpu, 1 used): only the quota holds it back
        assert (await bus.record(second)).state.value == "queued"

        # a dry run of the same spec applies the same policy: the queue's quota, not just the room
        reply = await bus.nc.request(
            bus.subjects.scheduler_dry_run,
            DryRunRequest(spec=JobSpec(name="q3", queue="team-a", command=["true"], resources={"cpu": 1}))
            .model_dump_json()
            .encode(),
            timeout=5,
        )
        dry = DryRunAnswer.model_validate_json(reply.data)
        assert not dry.would_start and dry.reason is not None
        assert dry.reason.kind == "quota" and "team-a" in dry.reason.message


async def test_a_higher_priority_job_preempts_a_preemptible_one_which_comes_back(common, bus):
    scheduler, executor = apps(common, cpu=1)
    async with running(scheduler), running(executor):
        low = await bus.submit(
            JobSpec(
                name="low", command=[PY, "-c", "import time; time.sleep(3)"], preemptible=True, priority=0
            )
        )
        await bus.wait_state(low, "running")
        high = await bus.submit(JobSpec(name="high", command=["true"], priority=100))

        done = await bus.wait_state(high, "succeeded", timeout=30)
        assert done.attempt == 1
        back = await bus.wait_state(low, "succeeded", timeout=60)
    # the victim: attempt 1 requeued as preempted (not a retry), attempt 2 ran to the end
    assert back.attempt == 2 and back.retries_used == 0
    assert back.attempts[0].state.value == "requeued" and "preempted" in (back.attempts[0].reason or "")
    types = await bus.event_types(low)
    assert "requeued" in types and types.count("succeeded") == 1
    cycles = [
        json.loads(m.data)
        for m in await bus.messages(bus.subjects.scheduler_decisions, bus.subjects.streams.scheduler)
    ]
    preempted = [p for c in cycles for p in c["preemptions"]]
    assert [(p["job_id"], p["attempt"], p["executor_id"]) for p in preempted] == [(low, 1, "exec-p")]
