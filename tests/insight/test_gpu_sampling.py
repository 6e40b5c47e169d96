"""A local job with GPUs: the executor samples its own devices through NVML while it runs
(``sys.gpu``, ``sys.gpu_memory_bytes`` with its metrics) and puts GPU seconds and the peak device
memory on its record at the end.

No GPU exists where these tests run: a fake ``nvidia-smi`` answers the executor's discovery as a
4-GPU machine does, and ``FakeNvml`` (trainyard_executor.testkit) stands in for the ``pynvml``
module (NVML's call names and struct shapes, figures in a real A100's ranges, not recorded on a
GPU). Everything else is real: a nats-server, the scheduler, the executor, the job's process.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from trainyard_contracts import JobSpec
from trainyard_executor.gpus import QUERY_ARGS
from trainyard_executor.testkit import FakeNvml
from trainyard_scheduler.testkit import quick_scheduler
from trainyard_shared.testing.helpers import eventually, fake_nvidia_smi, four_gpu_query_lines, running

from .jobs import PY, executor

pytestmark = [pytest.mark.insight, pytest.mark.service, pytest.mark.local]

GIB = 2**30
WAIT_FOR_GO = (
    "import os, time\n"
    "go = os.path.join(os.environ['TRAINYARD_WORKDIR'], 'go')\n"
    "deadline = time.time() + 90\n"
    "while not os.path.exists(go) and time.time() < deadline:\n"
    "    time.sleep(0.05)\n"
)


async def test_a_jobs_own_gpus_are_sampled_and_its_gpu_seconds_recorded(common, bus, tmp_path, monkeypatch):
    nvml = FakeNvml(devices=4)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)  # what `import pynvml` gives the executor
    smi = fake_nvidia_smi(tmp_path, four_gpu_query_lines(), " ".join(QUERY_ARGS))
    async with (
        running(quick_scheduler(common)),
        running(executor(common, sample_seconds=0.2, nvidia_smi=str(smi), gpu=None)),
    ):
        spec = JobSpec(name="on-gpus", command=[PY, "-c", WAIT_FOR_GO], queue="default")
        spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"gpu": 2})})
        job_id = await bus.submit(spec)
        # a subscription: the samples keep coming, so a read "until a pause" would not end
        seen: list[dict] = []

        async def collect(msg: Any) -> None:
            seen.extend(json.loads(msg.data)["points"])

        await bus.js.subscribe(
            bus.subjects.metrics_of(job_id),
            cb=collect,
            ordered_consumer=True,
            stream=bus.subjects.streams.metrics,
        )

        async def sampled() -> list[dict] | None:
            found = [p for p in seen if "sys.gpu" in p["values"]]
            return found if len(found) >= 2 else None

        samples = await eventually(sampled, 60, "two GPU samples on the metrics stream")
        record = await bus.record(job_id)
        assert record is not None
        devices = record.gpu_devices(1, "exec-m")
        assert len(devices) == 2
        assert samples[-1]["values"]["sys.gpu"] == pytest.approx(1.74)  # two devices 87 % busy
        # its own two devices' memory, not the machine's four
        assert samples[-1]["values"]["sys.gpu_memory_bytes"] == sum((i + 1) * GIB for i in devices)
        workdir = common.resolved_data_dir() / "executor" / "exec-m" / "work" / job_id / "attempt-1"
        (workdir / "go").touch()
        ended = await bus.wait_state(job_id, "succeeded")

    usage = ended.attempts[-1].usage
    assert usage is not None and usage.gpu_seconds is not None and usage.gpu_seconds > 0
    assert usage.peak_gpu_memory_bytes == sum((i + 1) * GIB for i in devices)
    assert nvml.initialised == 1
