"""GPU utilisation and memory of an attempt's devices, through NVML (``nvidia-ml-py``, imported as
``pynvml``), for the resource sampler (sampling.py).

The scheduler gives each attempt its own devices (by index, as ``nvidia-smi`` numbers them, which
is NVML's numbering too), so a device's figures are the attempt's: ``nvmlDeviceGetUtilizationRates``
(the percentage of the last sample period, 1/6 s to 1 s by model, in which a kernel ran) and
``nvmlDeviceGetMemoryInfo`` (bytes used on the device). NVML is initialised once per executor, on
the first attempt with devices; a machine without the driver's library (``libnvidia-ml.so``), or a
device NVML does not answer for, means no GPU figures, never a failed attempt.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("trainyard.executor")


@dataclass(frozen=True)
class GpuReading:
    busy: float
    """GPUs busy now: the devices' utilisation together (two devices at 50 % = 1.0)."""
    memory_bytes: int
    """Device memory used, the devices together."""
    devices: int


class Nvml:
    """NVML for this process: initialised on first use (``module``: pynvml, or a stand-in)."""

    def __init__(self, module: Any | None = None) -> None:
        self._module = module
        self._ready: bool | None = None  # None: not tried yet
        self._lock = threading.Lock()

    def module(self) -> Any | None:
        """pynvml, initialised; None where NVML cannot be had (said once in the log)."""
        with self._lock:
            if self._ready is None:
                self._ready = self._init()
            return self._module if self._ready else None

    def _init(self) -> bool:
        try:
            if self._module is None:
                import pynvml  # nvidia-ml-py

                self._module = pynvml
            self._module.nvmlInit()
        except Exception as exc:  # no driver library, no device: pynvml.NVMLError and OSError alike
            log.warning("GPU use is not sampled: NVML is not available", extra={"error": f"{exc}"})
            return False
        return True

    def reader(self, devices: Sequence[int]) -> GpuReader | None:
        """A reader of ``devices`` (None: none given, or NVML not available)."""
        if not devices:
            return None
        nvml = self.module()
        return GpuReader(nvml, tuple(devices)) if nvml is not None else None


class GpuReader:
    """Reads an attempt's devices; handles are looked up on first read."""

    def __init__(self, nvml: Any, devices: tuple[int, ...]) -> None:
        self.nvml = nvml
        self.devices = devices
        self._handles: list[Any] | None = None

    def read(self) -> GpuReading | None:
        """(Blocking: the sampler runs in a worker thread.) The devices' figures now; None when
        NVML answers for none of them."""
        nvml = self.nvml
        if self._handles is None:
            self._handles = []
            for index in self.devices:
                try:
                    self._handles.append(nvml.nvmlDeviceGetHandleByIndex(index))
                except Exception as exc:
                    log.warning("GPU %d is not sampled: %s", index, exc)
        busy, used, seen = 0.0, 0, 0
        for handle in self._handles:
            try:
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception:  # a device that fell off the bus, or NVML_ERROR_NOT_SUPPORTED
                continue
            busy += min(max(int(rates.gpu), 0), 100) / 100
            used += max(int(memory.used), 0)
            seen += 1
        return GpuReading(busy=busy, memory_bytes=used, devices=seen) if seen else None
