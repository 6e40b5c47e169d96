"""Each attempt gets its own GPUs, by index (issue 13).

No GPU exists where these tests run: a fake ``nvidia-smi`` in the test's tmp dir answers the
executor's query with what a 4-GPU machine prints (``trainyard_shared.testing.helpers.fake_nvidia_smi``).
Everything else is real: a nats-server, the executor service, the local backend.

Before: the executor reported a GPU count only (``nvidia-smi -L``), so nothing could say which
device an attempt may use, and the local backend never set ``CUDA_VISIBLE_DEVICES``: every job saw
every GPU of the machine.
"""

from __future__ import annotations

import pytest
from nats.js.errors import KeyNotFoundError

from trainyard_contracts import ExecutorHeartbeat, JobCancelRequested, JobRecord, JobSpec
from trainyard_executor.app import create_app as executor_app
from trainyard_executor.gpus import QUERY_ARGS
from trainyard_executor.settings import ExecutorSettings
from trainyard_scheduler.testkit import quick_scheduler
from trainyard_shared.settings import CommonSettings
from trainyard_shared.testing.helpers import Bus, eventually, fake_nvidia_smi, four_gpu_query_lines, running

pytestmark = [pytest.mark.security, pytest.mark.service, pytest.mark.local]


def gpu_executor(common: CommonSettings, smi: str, name: str = "exec-gpu") -> object:
    return executor_app(
        common,
        ExecutorSettings(
            id=name,
            backend="local",
            cpu=8,
            memory=8192,
            heartbeat_seconds=0.2,
            lease_seconds=5,
            grace_seconds=2,
            nvidia_smi=smi,
        ),
    )


# prints what the job sees, then runs until cancelled (so the jobs run at the same time)
SHOW_DEVICES = ["/bin/sh", "-c", 'echo "visible=[${CUDA_VISIBLE_DEVICES-unset}]"; exec sleep 120']


async def cancel(bus: Bus, job_id: str) -> None:
    """What the submission service does on POST /cancel."""
    kv = await bus.js.key_value(bus.subjects.buckets.jobs)
    entry = await kv.get(job_id)
    record = JobRecord.model_validate_json(entry.value or b"")
    await kv.update(
        job_id,
        record.model_copy(update={"cancel_requested": True}).model_dump_json().encode(),
        last=entry.revision,
    )
    event = JobCancelRequested(job_id=job_id, attempt=record.attempt, by="test")
    await bus.js.publish(event.subject(bus.subjects), event.model_dump_json().encode())


def visible(lines: list[str]) -> str | None:
    for line in lines:
        if line.startswith("visible=["):
            return line[len("visible=[") : -1]
    return None


async def test_an_executor_with_four_gpus_advertises_each_by_index_and_uuid(nats_server, prefix, tmp_path):
    smi = fake_nvidia_smi(tmp_path, four_gpu_query_lines(), " ".join(QUERY_ARGS))
    common = CommonSettings(nats_url=nats_server.url, prefix=prefix, data_dir=tmp_path, log_format="text")
    async with Bus(nats_server.url, prefix) as bus, running(gpu_executor(common, str(smi))):
        kv = await bus.js.key_value(bus.subjects.buckets.executors)

        async def heartbeat() -> ExecutorHeartbeat | None:
            try:
                entry = await kv.get("exec-gpu")
            except KeyNotFoundError:
                return None
            return ExecutorHeartbeat.model_validate_json(entry.value) if entry.value else None

        beat = await eventually(heartbeat, what="the executor's heartbeat")
    assert [g.index for g in beat.gpus] == [0, 1, 2, 3]
    assert len({g.uuid for g in beat.gpus}) == 4 and all(g.uuid.startswith("GPU-") for g in beat.gpus)
    assert beat.capacity.gpu == 4


async def test_jobs_running_at_once_see_disjoint_devices_and_a_cpu_job_sees_none(
    nats_server, prefix, tmp_path
):
    smi = fake_nvidia_smi(tmp_path, four_gpu_query_lines(), " ".join(QUERY_ARGS))
    common = CommonSettings(nats_url=nats_server.url, prefix=prefix, data_dir=tmp_path, log_format="text")
    scheduler = quick_scheduler(common)
    gpus_of = {"one-a": 1, "one-b": 1, "two": 2, "cpu": 0}
    async with (
        Bus(nats_server.url, prefix) as bus,
        running(scheduler),
        running(gpu_executor(common, str(smi))),
    ):
        ids = {
            name: await bus.submit(
                JobSpec.model_validate(
                    {"name": name, "command": SHOW_DEVICES, "resources": {"cpu": 1, "memory": 64, "gpu": gpu}}
                )
            )
            for name, gpu in gpus_of.items()
        }

        async def all_report() -> dict[str, str] | None:
            seen = {name: visible(await bus.log_text(job_id)) for name, job_id in ids.items()}
            return seen if all(v is not None for v in seen.values()) else None

        seen = await eventually(all_report, timeout=60, what="every job printing its devices")
        records = {name: await bus.record(job_id) for name, job_id in ids.items()}
        for job_id in ids.values():
            await cancel(bus, job_id)
        for job_id in ids.values():
            await bus.wait_state(job_id, "cancelled", "failed", "succeeded")
    assert all(r is not None and r.state.value == "running" for r in records.values()), records
    assert "unset" not in seen.values(), seen  # every job is told which devices it has
    devices = {name: [int(d) for d in v.split(",")] if v else [] for name, v in seen.items()}
    assert seen["cpu"] == ""  # set, and empty: no device at all
    for name, gpu in gpus_of.items():
        assert len(devices[name]) == gpu, (name, seen)
        assert set(devices[name]) <= {0, 1, 2, 3}
        current = records[name].current_attempt()  # type: ignore[union-attr]
        assert current is not None and current.gpus == devices[name]  # the record holds the choice
    every = [d for ds in devices.values() for d in ds]
    assert sorted(every) == [0, 1, 2, 3]  # four GPUs, four needed: each once
