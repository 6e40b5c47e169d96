"""What an attempt used: CPU seconds and peak memory, measured for local jobs and kept on the record.

The local backend's rank supervisor reaps the job with ``wait4`` and writes what it used beside
its exit status (the job cannot write that file); the executor reports it with the attempt's end and
the scheduler keeps it on the attempt's entry of the record (``attempts[].usage``). Real processes,
no mocks: the job below makes 200 MiB resident.
"""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from trainyard_contracts import AttemptUsage, JobSpec, JobState, lifecycle
from trainyard_contracts._time import utcnow
from trainyard_contracts.reports import ExecutorReport
from trainyard_executor.backends import AttemptLaunch, LocalBackend
from trainyard_executor.testengines import Lines
from trainyard_shared.reports import apply_report

MIB = 1024 * 1024
ALLOCATES_200_MIB = """
    import time
    block = bytearray(b"x") * (200 * 1024 * 1024)  # written, so resident (not a lazy zero page)
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # and some CPU time to count
        pass
    print(len(block))
"""


def launch(tmp_path: Path, script: str) -> AttemptLaunch:
    job_id = "job" + uuid.uuid4().hex[:12]
    return AttemptLaunch(
        job_id=job_id,
        attempt=1,
        argv=[sys.executable, "-c", textwrap.dedent(script)],
        env={"TRAINYARD_JOB_ID": job_id, "TRAINYARD_ATTEMPT": "1"},
        workdir=tmp_path / "work" / job_id / "attempt-1",
        timeout_s=None,
        grace_s=10.0,
    )


@pytest.mark.integration
@pytest.mark.local
@pytest.mark.insight
async def test_a_local_job_that_holds_200_mib_is_measured_at_that_peak(tmp_path: Path) -> None:
    backend = LocalBackend(root=tmp_path / "root")
    outcome = await (await backend.start(launch(tmp_path, ALLOCATES_200_MIB), Lines())).wait()
    assert outcome.kind == "succeeded", outcome.reason
    assert outcome.usage is not None
    assert 200 * MIB <= outcome.usage.peak_memory_bytes < 1024 * MIB
    assert outcome.usage.cpu_seconds >= 0.2


@pytest.mark.integration
@pytest.mark.local
@pytest.mark.insight
async def test_a_job_that_never_started_has_no_usage(tmp_path: Path) -> None:
    backend = LocalBackend(root=tmp_path / "root")
    missing = launch(tmp_path, "")
    missing = AttemptLaunch(**{**missing.__dict__, "argv": ["trainyard-no-such-command"]})
    outcome = await (await backend.start(missing, Lines())).wait()
    assert outcome.kind == "failed" and outcome.usage is None


def _report(usage: AttemptUsage, executor: str = "exec-a") -> ExecutorReport:
    return ExecutorReport(
        kind="end",
        job_id="j1",
        attempt=1,
        executor_id=executor,
        time=utcnow(),
        outcome="succeeded",
        exit_code=0,
        reason="exit code 0",
        usage=usage,
    )


@pytest.mark.unit
@pytest.mark.insight
def test_the_end_report_keeps_what_the_attempt_used_on_its_record_entry() -> None:
    now = utcnow()
    spec = JobSpec(name="measured", command=["true"])
    queued = lifecycle.advance(lifecycle.new_record("j1", spec, now, None), JobState.QUEUED, now)
    running = lifecycle.start(lifecycle.schedule(queued, "exec-a", now), now)
    used = AttemptUsage(cpu_seconds=1.5, peak_memory_bytes=200 * MIB)
    after = apply_report(running, _report(used))
    assert after is not None and after.state == JobState.SUCCEEDED
    assert after.attempts[-1].number == 1 and after.attempts[-1].usage == used


@pytest.mark.unit
@pytest.mark.insight
def test_members_of_a_split_gang_add_their_cpu_and_keep_the_larger_peak() -> None:
    first = AttemptUsage(cpu_seconds=2.0, peak_memory_bytes=300 * MIB)
    second = AttemptUsage(cpu_seconds=1.0, peak_memory_bytes=100 * MIB)
    assert first.plus(second) == AttemptUsage(cpu_seconds=3.0, peak_memory_bytes=300 * MIB)
    now = utcnow()
    spec = JobSpec(name="measured", command=["true"])
    record = lifecycle.start(
        lifecycle.schedule(
            lifecycle.advance(lifecycle.new_record("j1", spec, now, None), JobState.QUEUED, now),
            "exec-a",
            now,
        ),
        now,
    )
    twice = lifecycle.used(lifecycle.used(record, 1, first), 1, second)
    assert twice.attempts[-1].usage == AttemptUsage(cpu_seconds=3.0, peak_memory_bytes=300 * MIB)
