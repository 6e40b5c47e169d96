"""An attempt's end written but never announced is announced when its report comes again.

The executor reports an attempt's end; the scheduler writes it into the record, then publishes the
event. A ``kill -9`` of the scheduler between the two (found by the chaos run, when the executor
still wrote its end itself: "succeeded in its record, but no terminal event") leaves the record
``succeeded`` and the jobs stream without a terminal event, so nothing downstream (registry,
workflow, followers) would hear of it. The report was not acknowledged, so it is delivered again:
the real scheduler on a real nats-server announces the unsaid end with the event's own message id;
one already announced is not announced again; a report about an end elsewhere announces nothing.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from trainyard_contracts import JobRecord, JobSpec, JobState, lifecycle, new_job_id
from trainyard_contracts._time import utcnow
from trainyard_contracts.events import JobSucceeded
from trainyard_contracts.reports import ExecutorReport
from trainyard_scheduler.app import create_app as scheduler_app
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_shared.provision import provision
from trainyard_shared.reports import apply_report

from .harness import eventually, running

pytestmark = [pytest.mark.service]


def running_on(executor: str, name: str) -> JobRecord:
    now = utcnow() - timedelta(seconds=5)
    record = lifecycle.new_record(new_job_id(), JobSpec(name=name, command=["true"]), now, "t")
    record = lifecycle.advance(record, JobState.QUEUED, now)
    return lifecycle.start(lifecycle.schedule(record, executor, now), now)


def end_report(record: JobRecord, executor: str) -> ExecutorReport:
    return ExecutorReport(
        kind="end",
        job_id=record.job_id,
        attempt=1,
        executor_id=executor,
        time=utcnow(),
        outcome="succeeded",
        exit_code=0,
        reason="exit code 0",
    )


async def test_an_end_applied_but_never_announced_is_announced_once_when_its_report_comes_again(common, bus):
    unsaid, said, elsewhere = (
        running_on("exec-end", "unsaid"),
        running_on("exec-end", "said"),
        running_on("other", "x"),
    )
    reports = {job.job_id: end_report(job, "exec-end") for job in (unsaid, said, elsewhere)}
    await provision(bus.js, bus.subjects)  # as the stack's provision step does before any service
    kv = await bus.js.key_value(bus.subjects.buckets.jobs)
    for record in (unsaid, said, elsewhere):
        # what the scheduler wrote before it died (the one elsewhere: still running there)
        written = apply_report(record, reports[record.job_id]) or record
        await kv.create(record.job_id, written.model_dump_json().encode())
    event = JobSucceeded(job_id=said.job_id, attempt=1, executor_id="exec-end", exit_code=0)
    await bus.js.publish(
        event.subject(bus.subjects),
        event.model_dump_json().encode(),
        headers={"Nats-Msg-Id": event.msg_id()},
        stream=bus.subjects.streams.jobs,
    )
    for report in reports.values():  # delivered again to the scheduler that comes back
        await bus.js.publish(
            bus.subjects.exec_report(report.executor_id, report.job_id),
            report.model_dump_json().encode(),
            headers={"Nats-Msg-Id": report.msg_id()},
            stream=bus.subjects.streams.reports,
        )
    async with running(scheduler_app(common, SchedulerSettings(tick_seconds=0.2, lost_grace_seconds=600))):

        async def announced() -> bool:
            return await bus.event_types(unsaid.job_id) == ["succeeded"]

        await eventually(announced, 30, "the unsaid end announced")

        async def all_applied() -> bool:
            info = await bus.js.stream_info(bus.subjects.streams.reports)
            return bool(info.state.messages == 0)  # a work queue: each report acked is gone

        await eventually(all_applied, 30, "every report handled")
        assert await bus.event_types(said.job_id) == ["succeeded"]  # not a second time
        assert await bus.event_types(elsewhere.job_id) == []  # another executor's attempt
        still = await bus.record(elsewhere.job_id)
        assert still is not None and still.state == JobState.RUNNING and still.executor_id == "other"
