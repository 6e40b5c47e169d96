"""An executor for tests that run jobs (test kit, imported by test modules in any folder).

Short heartbeats, leases and grace so a test sees a lost executor or a stopped attempt in seconds,
and room for a few small jobs. Any setting can be overridden by keyword.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faststream.asgi import AsgiFastStream

from trainyard_executor.app import create_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_shared.settings import CommonSettings

QUICK = {
    "cpu": 4,
    "memory": 8192,
    "gpu": 0,
    "heartbeat_seconds": 0.5,
    "lease_seconds": 3,
    "grace_seconds": 2,
}


def quick_executor_settings(executor_id: str = "exec-a", **overrides: Any) -> ExecutorSettings:
    return ExecutorSettings(**{"id": executor_id, **QUICK, **overrides})


def quick_executor(common: CommonSettings, executor_id: str = "exec-a", **overrides: Any) -> AsgiFastStream:
    return create_app(common, quick_executor_settings(executor_id, **overrides))


class FakeNvml:
    """Stands in for the ``pynvml`` module (nvidia-ml-py) where no GPU exists (this machine, CI):
    the calls the executor makes (nvml.py), answering with objects shaped as NVML's own structs
    (``c_nvmlUtilization_t``: ``gpu``, ``memory`` in percent; ``c_nvmlMemory_t``: ``total``,
    ``free``, ``used`` in bytes). The default figures are in the ranges an NVIDIA A100-SXM4-40GB
    answers (40 GiB total) while training; they are not recorded here, for want of a GPU.
    ``busy`` and ``used`` (by device index) can be changed while a test runs; an index in
    ``unsupported`` raises as NVML does for a device that does not support the query."""

    class NVMLError(Exception):
        pass

    def __init__(self, devices: int = 4) -> None:
        self.devices = devices
        self.busy = {i: 87 for i in range(devices)}
        self.used = {i: (i + 1) * 2**30 for i in range(devices)}
        self.unsupported: set[int] = set()
        self.initialised = 0

    def nvmlInit(self) -> None:  # pynvml's names, as NVML spells them
        self.initialised += 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < self.devices:
            raise self.NVMLError("Invalid Argument")
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        if handle in self.unsupported:
            raise self.NVMLError("Not Supported")
        return SimpleNamespace(gpu=self.busy[handle], memory=41)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        total = 40 * 2**30
        return SimpleNamespace(total=total, free=total - self.used[handle], used=self.used[handle])


class Clock:
    """A clock a test moves by hand (``clock.now += 5``), for the samplers' arithmetic."""

    def __init__(self, now: float = 1_764_770_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
