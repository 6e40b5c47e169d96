"""GPU use through NVML (nvml.py) and what the sampler makes of it.

No GPU exists where these tests run: ``FakeNvml`` (trainyard_executor.testkit) stands in for the
``pynvml`` module with NVML's call names and struct shapes and figures in a real A100's ranges, not
recorded on a GPU. The real pynvml is used once: on this machine it finds no driver library, which
must mean no GPU figures, not a failure.
"""

from __future__ import annotations

import logging

import pytest

from trainyard_contracts import AttemptUsage
from trainyard_executor.nvml import GpuReading, Nvml
from trainyard_executor.sampling import GPU, GPU_MEMORY, Reading, ResourceSampler, with_samples
from trainyard_executor.testkit import Clock, FakeNvml

pytestmark = [pytest.mark.unit, pytest.mark.insight]

GIB = 2**30


def test_an_attempts_devices_are_read_together():
    fake = FakeNvml(devices=4)
    fake.busy[2], fake.busy[3] = 50, 100
    reader = Nvml(fake).reader((2, 3))
    assert reader is not None
    assert reader.read() == GpuReading(busy=1.5, memory_bytes=3 * GIB + 4 * GIB, devices=2)
    assert fake.initialised == 1
    assert Nvml(fake).reader(()) is None  # a job without GPUs reads none


def test_a_device_nvml_does_not_answer_for_is_left_out():
    fake = FakeNvml(devices=2)
    fake.unsupported.add(1)
    reader = Nvml(fake).reader((0, 1, 7))  # 7: no such device, said once in the log
    assert reader is not None
    assert reader.read() == GpuReading(busy=0.87, memory_bytes=GIB, devices=1)
    fake.unsupported.add(0)
    assert reader.read() is None


def test_without_the_driver_library_there_are_no_gpu_figures(caplog):
    """The real pynvml (nvidia-ml-py) on this machine: no libnvidia-ml.so."""
    nvml = Nvml()
    with caplog.at_level(logging.WARNING, "trainyard.executor"):
        assert nvml.reader((0,)) is None
        assert nvml.reader((1,)) is None
    assert [r.getMessage() for r in caplog.records] == ["GPU use is not sampled: NVML is not available"]


def test_samples_carry_gpu_use_and_the_record_gets_gpu_seconds():
    fake = FakeNvml(devices=2)
    reader = Nvml(fake).reader((0, 1))
    assert reader is not None
    clock = Clock()
    sampler = ResourceSampler(lambda: Reading(1.0, 100 * 2**20), 5.0, clock=clock, gpu=reader.read)
    fake.busy = {0: 100, 1: 100}
    first = sampler.sample()
    assert first is not None and first.values[GPU] == 2.0 and first.values[GPU_MEMORY] == 3 * GIB
    clock.now += 10
    fake.busy = {0: 0, 1: 0}
    fake.used = {0: GIB, 1: 5 * GIB}
    sampler.sample()
    # between the two samples: the mean of 2 busy and 0 busy over 10 s
    assert sampler.gpu_seconds == pytest.approx(10.0)
    usage = with_samples(AttemptUsage(cpu_seconds=2.0, peak_memory_bytes=50 * 2**20), sampler)
    assert usage == AttemptUsage(
        cpu_seconds=2.0, peak_memory_bytes=100 * 2**20, gpu_seconds=10.0, peak_gpu_memory_bytes=6 * GIB
    )


def test_an_attempt_without_gpus_has_no_gpu_figures_on_its_record():
    sampler = ResourceSampler(lambda: Reading(1.0, 2**20), 5.0, clock=Clock())
    point = sampler.sample()
    assert point is not None and GPU not in point.values
    usage = with_samples(None, sampler)
    assert usage is not None and usage.gpu_seconds is None and usage.peak_gpu_memory_bytes is None


def test_members_of_a_split_gang_add_their_gpu_seconds():
    a = AttemptUsage(cpu_seconds=1, peak_memory_bytes=10, gpu_seconds=3600, peak_gpu_memory_bytes=GIB)
    b = AttemptUsage(cpu_seconds=2, peak_memory_bytes=20, gpu_seconds=1800, peak_gpu_memory_bytes=2 * GIB)
    none = AttemptUsage(cpu_seconds=1, peak_memory_bytes=5)
    assert a.plus(b) == AttemptUsage(
        cpu_seconds=3, peak_memory_bytes=20, gpu_seconds=5400, peak_gpu_memory_bytes=2 * GIB
    )
    assert a.plus(none).gpu_seconds == 3600 and none.plus(none).gpu_seconds is None
