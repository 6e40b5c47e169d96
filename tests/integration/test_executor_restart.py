"""An executor process killed with SIGKILL mid-job, then started again on the same data dir.

The scheduler runs in this process; the executor is a real ``python -m trainyard_executor`` process
(local backend) on a real nats-server, and the job is a real process that appends a line to a
marker file each time it starts. The job must end succeeded once (adopted by the new executor),
or be run again only after its first attempt was stopped: never twice at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trainyard_contracts import JobSpec, JobState

from .harness import Bus, eventually, running

pytestmark = [pytest.mark.service, pytest.mark.local]
PY = sys.executable

JOB = """
import os, sys, time
marker, go = sys.argv[1], sys.argv[2]
attempt = os.environ["TRAINYARD_ATTEMPT"]
with open(marker) as f:
    before = [line.split() for line in f]
for _, pid in before:  # an earlier attempt still alive now would be a job running twice at once
    try:
        os.kill(int(pid), 0)
        stat = open(f"/proc/{pid}/stat").read()
        if stat[stat.rfind(")") + 2] not in "ZX":
            print("OVERLAP with", pid, flush=True)
    except (ProcessLookupError, FileNotFoundError):
        pass
with open(marker, "a") as f:
    f.write(f"{attempt} {os.getpid()}\\n")
print("first", attempt, flush=True)
if attempt == "1":
    while not os.path.exists(go):
        time.sleep(0.05)
print("second", attempt, flush=True)
"""


class ExecutorProcess:
    """``python -m trainyard_executor`` with its settings in the environment."""

    def __init__(self, nats_url: str, prefix: str, data: Path, log: Path, lease: float) -> None:
        self.env = {
            **os.environ,
            "TRAINYARD_NATS_URL": nats_url,
            "TRAINYARD_PREFIX": prefix,
            "TRAINYARD_DATA_DIR": str(data),
            "TRAINYARD_LOG_FORMAT": "text",
            "TRAINYARD_EXECUTOR_ID": "exec-restart",
            "TRAINYARD_EXECUTOR_PORT": "0",
            "TRAINYARD_EXECUTOR_CPU": "4",
            "TRAINYARD_EXECUTOR_MEMORY": "8192",
            "TRAINYARD_EXECUTOR_GPU": "0",
            "TRAINYARD_EXECUTOR_HEARTBEAT_SECONDS": "0.5",
            "TRAINYARD_EXECUTOR_LEASE_SECONDS": str(lease),
            "TRAINYARD_EXECUTOR_GRACE_SECONDS": "2",
        }
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [PY, "-m", "trainyard_executor"], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)  # no shutdown hook runs: a crash
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


@pytest.fixture
def executors(nats_server, prefix, tmp_path) -> Iterator[Any]:
    made: list[ExecutorProcess] = []

    def make(lease: float) -> ExecutorProcess:
        process = ExecutorProcess(
            nats_server.url, prefix, tmp_path / "data", tmp_path / "executor.log", lease
        )
        made.append(process)
        return process

    yield make
    for process in made:
        process.stop()


def scheduler(common):
    from trainyard_scheduler.app import create_app
    from trainyard_scheduler.settings import SchedulerSettings

    return create_app(common, SchedulerSettings(tick_seconds=0.2, submitted_grace_seconds=1))


async def heartbeat_lists(bus: Bus, job_id: str) -> bool:
    kv = await bus.js.key_value(bus.subjects.buckets.executors)
    try:
        beat = json.loads((await kv.get("exec-restart")).value)
    except Exception:
        return False
    return any(r["job_id"] == job_id for r in beat["running"])


def starts(marker: Path) -> list[list[str]]:
    return [line.split() for line in marker.read_text().splitlines()]


async def test_a_killed_executor_comes_back_and_adopts_the_running_attempt(common, bus, executors, tmp_path):
    marker, go = tmp_path / "marker", tmp_path / "go"
    marker.write_text("")
    executor = executors(lease=60)  # the scheduler must not give up on it while it restarts
    async with running(scheduler(common)):
        executor.start()
        job_id = await bus.submit(JobSpec(name="adoptee", command=[PY, "-c", JOB, str(marker), str(go)]))
        await bus.wait_state(job_id, "running")
        await eventually(lambda: _ready(len(starts(marker)) == 1), 30, "the job started")
        executor.kill()
        [[_, pid]] = starts(marker)
        assert _alive(int(pid))  # the job outlived its executor
        executor.start()
        await eventually(lambda: heartbeat_lists(bus, job_id), 60, "the attempt adopted")
        go.write_text("")
        done = await bus.wait_state(job_id, "succeeded", "failed", "requeued", timeout=60)
        texts = await bus.log_text(job_id)
        events = await bus.event_types(job_id)
    assert done.state == JobState.SUCCEEDED and done.attempt == 1, (done.reason, texts)
    assert starts(marker) == [["1", pid]]  # ran once
    assert events.count("running") == 1 and "requeued" not in events
    assert "first 1" in texts and "second 1" in texts and not any(t.startswith("OVERLAP") for t in texts)
    assert any("adopted by exec-restart" in t for t in texts)


async def test_an_attempt_requeued_while_its_executor_was_dead_is_stopped_before_the_next_runs(
    common, bus, executors, tmp_path
):
    marker, go = tmp_path / "marker", tmp_path / "go"
    marker.write_text("")
    executor = executors(lease=2)
    async with running(scheduler(common)):
        executor.start()
        job_id = await bus.submit(JobSpec(name="superseded", command=[PY, "-c", JOB, str(marker), str(go)]))
        await bus.wait_state(job_id, "running")
        await eventually(lambda: _ready(len(starts(marker)) == 1), 30, "the job started")
        executor.kill()
        [[_, first_pid]] = starts(marker)
        # the lease runs out: the scheduler hands attempt 1's job back to the queue as attempt 2
        requeued = await bus.wait_state(job_id, "requeued", "queued", timeout=60)
        assert requeued.attempt == 2 and _alive(int(first_pid))  # attempt 1 still runs, unowned
        executor.start()
        done = await bus.wait_state(job_id, "succeeded", "failed", timeout=60)
        texts = await bus.log_text(job_id)
    assert done.state == JobState.SUCCEEDED and done.attempt == 2, (done.reason, texts)
    assert [a for a, _ in starts(marker)] == ["1", "2"]
    assert not _alive(int(first_pid))
    assert not any(t.startswith("OVERLAP") for t in texts), texts  # attempt 1 was gone before attempt 2 began
    assert done.retries_used == 0


async def _ready(value: bool) -> bool:
    return value


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


CHECKPOINTING = """
import os, pathlib, signal, sys, time
ckpt = pathlib.Path(os.environ["TRAINYARD_CHECKPOINT_DIR"]) / "state"
if ckpt.exists():
    print("resumed from", ckpt.read_text(), "in attempt", os.environ["TRAINYARD_ATTEMPT"], flush=True)
    sys.exit(0)
def on_term(signum, frame):  # the preemption notice: save and leave within the grace period
    ckpt.write_text("step=42")
    print("checkpoint saved", flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
print("training", flush=True)
time.sleep(300)
"""


async def test_a_stopped_attempt_checkpoints_in_its_grace_period_and_the_next_attempt_resumes(common, bus):
    """SIGTERM with a grace period (here: the executor is stopped and hands the job back; the
    same path as any cancel with ``grace_seconds``), TRAINYARD_CHECKPOINT_DIR kept per job."""
    from trainyard_executor.app import create_app
    from trainyard_executor.testkit import quick_executor_settings

    def executor():
        settings = quick_executor_settings("exec-ckpt", lease_seconds=5, grace_seconds=10)
        return create_app(common, settings)

    async with running(scheduler(common)):
        async with running(executor()):
            job_id = await bus.submit(JobSpec(name="preempted", command=[PY, "-c", CHECKPOINTING]))

            async def training() -> bool:
                return "training" in await bus.log_text(job_id)

            await eventually(training, 30, "attempt 1 training")
        handed_back = await bus.record(job_id)
        assert handed_back is not None and handed_back.state == JobState.REQUEUED
        ckpt_dir = Path(common.data_dir) / "checkpoints" / job_id
        assert (ckpt_dir / "state").read_text() == "step=42"
        async with running(executor()):
            done = await bus.wait_state(job_id, "succeeded", "failed", timeout=60)
        texts = await bus.log_text(job_id)
    assert done.state == JobState.SUCCEEDED and done.attempt == 2, (done.reason, texts)
    assert "checkpoint saved" in texts and "resumed from step=42 in attempt 2" in texts
    assert not ckpt_dir.exists()  # the job ended: its checkpoints go with it
