"""Two schedulers that both believe they lead cannot assign the same attempt twice.

Leadership only decides who plans; the fence is the compare-and-set on the job record. Two
``SchedulerCore``s (each with its own NATS connection, store and view, as two replicas would be)
plan the same pending jobs against a real nats-server.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import timedelta
from fnmatch import fnmatch

import nats
import nats.js.errors
import pytest

from trainyard_contracts import (
    Capacity,
    ExecutorHeartbeat,
    JobRecord,
    JobSpec,
    JobState,
    lifecycle,
    new_job_id,
)
from trainyard_contracts._time import utcnow
from trainyard_scheduler.core import SchedulerCore
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_shared.broker import make_broker
from trainyard_shared.bus import ensure_streams, open_buckets
from trainyard_shared.executors import ExecutorDirectory
from trainyard_shared.jobstore import JobStore
from trainyard_shared.jobview import JobView
from trainyard_shared.publishing import CommandSender, EventPublisher
from trainyard_shared.settings import CommonSettings

pytestmark = pytest.mark.service
JOBS = 40


class Replica:
    """What one scheduler replica holds: a connection, a store, a view, a core."""

    def __init__(self, name: str, url: str, prefix: str) -> None:
        self.name = name
        self.sb = make_broker(CommonSettings(nats_url=url, prefix=prefix), "scheduler")
        self.won: list[str] = []  # job ids this replica moved to scheduled (successful CAS writes)
        self.leader = True

    def _count(self, record: JobRecord, _revision: int) -> None:
        if record.state == JobState.SCHEDULED:
            self.won.append(record.job_id)

    async def start(self) -> SchedulerCore:
        broker, subjects = self.sb.broker, self.sb.subjects
        await broker.connect()
        await ensure_streams(broker, subjects)
        buckets = await open_buckets(broker, subjects)
        store = JobStore(buckets.jobs)
        self.view = JobView(buckets.jobs)
        store.on_written(self.view.apply)
        store.on_written(
            lambda record, _rev: (
                self.won.append(record.job_id) if record.state == JobState.SCHEDULED else None
            )
        )
        await self.view.start()
        self.core = SchedulerCore(
            store,
            self.view,
            EventPublisher(broker, subjects),
            CommandSender(broker, subjects),
            ExecutorDirectory(buckets.executors),
            SchedulerSettings(replica_id=self.name),
            may_assign=lambda: self.leader,
        )
        return self.core

    async def stop(self) -> None:
        await self.view.stop()
        await self.sb.broker.stop()


@pytest.fixture
async def world(nats_server, prefix):
    """JOBS queued jobs and two executors with room for all of them, in a fresh installation."""
    setup = Replica("setup", nats_server.url, prefix)
    await setup.start()
    buckets = await open_buckets(setup.sb.broker, setup.sb.subjects)
    now = utcnow()
    for executor_id in ("exec-a", "exec-b"):
        beat = ExecutorHeartbeat(
            executor_id=executor_id,
            backend="none",
            capacity=Capacity(cpu=JOBS, memory=JOBS * 1024),
            time=now,
            lease_seconds=600,
        )
        await buckets.executors.put(executor_id, beat.model_dump_json().encode())
    job_ids = []
    for i in range(JOBS):
        job_id = new_job_id()
        spec = JobSpec(name=f"fenced-{i}", command=["true"])
        submitted = lifecycle.new_record(job_id, spec, now - timedelta(seconds=JOBS - i), "test")
        queued = lifecycle.advance(submitted, JobState.QUEUED, now)
        await buckets.jobs.create(job_id, queued.model_dump_json().encode())
        job_ids.append(job_id)
    await setup.stop()
    a, b = Replica("sched-a", nats_server.url, prefix), Replica("sched-b", nats_server.url, prefix)
    await a.start()
    await b.start()
    buckets = await open_buckets(a.sb.broker, a.sb.subjects)
    yield a, b, job_ids, buckets
    await a.stop()
    await b.stop()


async def stream_messages(url: str, stream: str, subject: str = ">") -> list:
    """Every message stored in ``stream`` on ``subject``, read one by one (a work-queue stream
    allows no ordered consumer)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        state = (await js.stream_info(stream)).state
        out = []
        for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
            try:
                out.append(await js.get_msg(stream, seq))
            except nats.js.errors.NotFoundError:
                continue
        return [m for m in out if fnmatch(m.subject, subject.replace(">", "*"))]
    finally:
        await nc.drain()


async def assert_each_job_scheduled_once(nats_server, prefix, a, b, job_ids, buckets):
    wins = Counter(a.won) + Counter(b.won)
    assert {job_id: wins[job_id] for job_id in job_ids} == {job_id: 1 for job_id in job_ids}
    assert not set(a.won) & set(b.won)

    for job_id in job_ids:
        record = JobRecord.model_validate_json((await buckets.jobs.get(job_id)).value)
        assert record.state == JobState.SCHEDULED and record.attempt == 1
        assert [info.number for info in record.attempts] == [1]

    subjects = a.sb.subjects
    events = await stream_messages(nats_server.url, subjects.streams.jobs, f"{prefix}.job.*.scheduled")
    scheduled = Counter((json.loads(m.data)["job_id"], json.loads(m.data)["attempt"]) for m in events)
    assert scheduled == Counter({(job_id, 1): 1 for job_id in job_ids})
    starts = await stream_messages(nats_server.url, subjects.streams.exec, f"{prefix}.exec.*.start")
    assert sorted(json.loads(m.data)["job_id"] for m in starts) == sorted(job_ids)


async def test_two_leaders_planning_the_same_jobs_concurrently_assign_each_once(nats_server, prefix, world):
    a, b, job_ids, buckets = world

    # both decide on the same view before either applies (decided concurrently, a's first writes
    # could reach b's view and b would not even try), then both apply at once
    now = utcnow()
    plan_a, plan_b = await a.core.decide(now), await b.core.decide(now)
    assert {x.job_id for x in plan_a.assignments} == set(job_ids)
    assert {x.job_id for x in plan_b.assignments} == set(job_ids)
    await asyncio.gather(a.core.apply(plan_a, now), b.core.apply(plan_b, now))
    await assert_each_job_scheduled_once(nats_server, prefix, a, b, job_ids, buckets)


async def test_a_paused_old_leader_applying_its_stale_plan_assigns_nothing(nats_server, prefix, world):
    a, b, job_ids, buckets = world
    now = utcnow()
    stale = await a.core.decide(now)  # a decides, then is paused (GC, SIGSTOP...)
    assert len(stale.assignments) == JOBS

    await b.core.plan_pass()  # meanwhile b has taken over and placed everything
    await a.core.apply(stale, now)  # a wakes up, still believing it leads

    assert a.won == [] and len(b.won) == JOBS
    await assert_each_job_scheduled_once(nats_server, prefix, a, b, job_ids, buckets)


async def test_a_replica_without_the_lease_assigns_nothing(world):
    a, _b, job_ids, buckets = world
    a.leader = False

    result = await a.core.plan_pass()

    assert result.assignments == () and a.won == []
    for job_id in job_ids:
        record = JobRecord.model_validate_json((await buckets.jobs.get(job_id)).value)
        assert record.state == JobState.QUEUED
