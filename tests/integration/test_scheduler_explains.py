"""The scheduler explains itself: `why` a job waits, a dry run of a spec, and one decision event
per planning pass that placed something — against a real nats-server, with a real executor."""

from __future__ import annotations

import json
import sys

import pytest

from trainyard_contracts import CycleDecisions, DryRunAnswer, DryRunRequest, JobSpec, WhyAnswer, WhyRequest
from trainyard_executor.app import create_app as executor_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_scheduler.app import create_app as scheduler_app
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_scheduler.testkit import quick_scheduler

from .harness import Bus, eventually, running

pytestmark = [pytest.mark.service, pytest.mark.local]
PY = sys.executable


def apps(common):
    scheduler = quick_scheduler(common)
    executor = executor_app(
        common,
        ExecutorSettings(id="exec-x", cpu=2, memory=4096, gpu=0, heartbeat_seconds=0.5, lease_seconds=3),
    )
    return scheduler, executor


async def ask(bus: Bus, subject: str, request, answer_type):
    reply = await bus.nc.request(subject, request.model_dump_json().encode(), timeout=5)
    return answer_type.model_validate_json(reply.data)


async def test_why_names_the_short_resource_and_the_queue_position(common, bus):
    scheduler, executor = apps(common)
    async with running(scheduler), running(executor):
        blocker = await bus.submit(
            JobSpec(name="blocker", command=[PY, "-c", "import time; time.sleep(30)"], resources={"cpu": 2})
        )
        await bus.wait_state(blocker, "running")
        big = await bus.submit(JobSpec(name="big", command=["true"], resources={"cpu": 2}))
        later = await bus.submit(JobSpec(name="later", command=["true"], resources={"cpu": 2}))

        async def explained():
            answer = await ask(bus, bus.subjects.scheduler_why, WhyRequest(job_id=later), WhyAnswer)
            return answer if answer.reason and answer.reason.position else None

        answer = await eventually(explained, 15, "a why answer with a position")
        assert answer.pending and answer.state == "queued" and answer.leader
        assert answer.reason.kind == "capacity" and "cpu" in answer.reason.message
        assert (answer.reason.position, answer.reason.queue_length) == (2, 2)  # `big` is ahead of it

        running_answer = await ask(bus, bus.subjects.scheduler_why, WhyRequest(job_id=blocker), WhyAnswer)
        assert not running_answer.pending and "running on exec-x" in running_answer.reason.message
        unknown = await ask(bus, bus.subjects.scheduler_why, WhyRequest(job_id="nosuchjob1"), WhyAnswer)
        assert unknown.found is False
        assert (await bus.record(big)).state.value == "queued"


async def test_why_reads_a_finished_job_the_scheduler_no_longer_keeps_in_memory(common, bus):
    scheduler = scheduler_app(
        common, SchedulerSettings(tick_seconds=0.2, submitted_grace_seconds=1, keep_finished_records=0)
    )
    _, executor = apps(common)
    async with running(scheduler), running(executor):
        done = await bus.submit(JobSpec(name="done", command=["true"]))
        await bus.wait_state(done, "succeeded")
        view = scheduler.context.get("runtime").get().view

        async def dropped():
            return view.get(done) is None and done in view.revisions

        await eventually(dropped, 10, "the finished record dropped from the view")
        answer = await ask(bus, bus.subjects.scheduler_why, WhyRequest(job_id=done), WhyAnswer)
        assert answer.found and not answer.pending and answer.state == "succeeded"
        assert "not pending: succeeded on exec-x" in answer.reason.message


async def test_a_dry_run_says_what_would_happen_and_queues_nothing(common, bus):
    scheduler, executor = apps(common)
    async with running(scheduler), running(executor):

        async def fits_now():
            # the leader may answer before the executor's first heartbeat: then it says no_executor
            try:
                answer = await ask(
                    bus,
                    bus.subjects.scheduler_dry_run,
                    DryRunRequest(spec=JobSpec(name="s", command=["true"])),
                    DryRunAnswer,
                )
            except Exception:  # no leader yet: no responders
                return None
            return answer if answer.would_start else None

        fits = await eventually(fits_now, 15, "a leader that sees the executor's room")
        assert fits.would_start and fits.executors == ["exec-x"]

        too_big = await ask(
            bus,
            bus.subjects.scheduler_dry_run,
            DryRunRequest(spec=JobSpec(name="b", command=["true"], resources={"cpu": 64})),
            DryRunAnswer,
        )
        assert not too_big.would_start and too_big.reason.kind in ("capacity", "too_large")
        assert "cpu 64" in too_big.reason.message

        kv = await bus.js.key_value(bus.subjects.buckets.jobs)
        assert [k async for k in _keys(kv)] == []  # nothing was queued


async def _keys(kv):
    try:
        for key in await kv.keys():
            yield key
    except Exception as exc:  # nats-py raises NoKeysError on an empty bucket
        if type(exc).__name__ != "NoKeysError":
            raise


async def test_each_pass_that_places_jobs_is_a_decision_event(common, bus):
    scheduler, executor = apps(common)
    async with running(scheduler), running(executor):
        jobs = [await bus.submit(JobSpec(name=f"d{i}", command=["true"])) for i in range(3)]
        for job_id in jobs:
            await bus.wait_state(job_id, "succeeded")

        async def cycles():
            msgs = await bus.messages(bus.subjects.scheduler_decisions, bus.subjects.streams.scheduler)
            events = [CycleDecisions.model_validate(json.loads(m.data)) for m in msgs]
            placed = {a.job_id for e in events for a in e.assignments}
            return events if set(jobs) <= placed else None

        events = await eventually(cycles, 10, "cycle events naming every job")
    assert [e.cycle for e in events] == list(range(1, len(events) + 1))
    assert all(e.replica and e.term >= 1 and e.duration_ms >= 0 for e in events)
    assignment = next(a for e in events for a in e.assignments if a.job_id == jobs[0])
    assert assignment.executors == ["exec-x"] and assignment.queue == "default" and assignment.attempt == 1
