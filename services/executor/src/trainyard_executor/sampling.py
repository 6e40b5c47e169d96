"""What an attempt uses while it runs: CPU and resident memory, sampled every few seconds and
published with the job's own metrics under reserved names (docs/insight.md, "Resource use").

Readers, by what the backend has:

- a cgroup v2 directory per attempt (local backend where there is one): ``cpu.stat``'s
  ``usage_usec`` (there whether or not the cpu controller is enabled) and ``memory.current`` where
  the memory controller is enabled, else the resident sets of the processes in ``cgroup.procs``;
- a container's engine (Docker, Podman): one stats read (``stream=false``) per interval;
- a Kubernetes attempt's pods: the metrics API's PodMetrics (backends/kube_usage.py);
- the ranks' process groups otherwise: every living process of the groups but their leaders (the
  rank supervisors, which are ours), from ``/proc/<pid>/stat``: user + system CPU of each, with
  what its waited-for children used (``cutime``, ``cstime``), and its resident set.

Every file read is the kernel's (cgroupfs, procfs): nothing the job can plant a link in is opened.
A process that leaves the groups (``setsid()``) is not seen without a cgroup; what a process used
before it exited counts only once its parent waited for it. Pure but for those reads.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainyard_contracts import AttemptUsage, MetricPoint
from trainyard_executor.nvml import GpuReading
from trainyard_executor.procfs import stat_fields

CPU = "sys.cpu"  # cores in use over the last interval (CPU seconds per second)
CPU_SECONDS = "sys.cpu_seconds"  # user + system CPU seconds so far
RSS = "sys.rss_bytes"  # resident memory of the job's processes together, now
GPU = "sys.gpu"  # GPUs busy now, the attempt's devices together (NVML's utilisation, nvml.py)
GPU_MEMORY = "sys.gpu_memory_bytes"  # device memory used now, its devices together

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class Reading:
    cpu_seconds: float
    rss_bytes: int
    cpu_cores: float | None = None
    """Cores in use now as the source gives them (a rate: Kubernetes' metrics API); None: the
    sampler derives it from ``cpu_seconds`` between two readings."""


Reader = Callable[[], Reading | None]
GpuRead = Callable[[], GpuReading | None]


def _cpu_and_rss(fields: list[bytes]) -> tuple[float, int]:
    # fields[11..14]: utime stime cutime cstime (ticks); fields[21]: rss (pages)
    ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return ticks / _TICKS, int(fields[21]) * _PAGE


def read_process_groups(pgids: Iterable[int]) -> Reading | None:
    """The processes of the groups ``pgids`` but their leaders, together (None: no such process)."""
    groups = set(pgids)
    if not groups:
        return None
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    cpu, rss, seen = 0.0, 0, False
    for name in entries:
        if not name.isdigit():
            continue
        pid = int(name)
        fields = stat_fields(pid)
        if fields is None or len(fields) < 22 or fields[0] in (b"Z", b"X"):
            continue
        if int(fields[2]) in groups and pid not in groups:
            used, resident = _cpu_and_rss(fields)
            cpu, rss, seen = cpu + used, rss + resident, True
    return Reading(cpu, rss) if seen else None


def read_cgroup(path: Path) -> Reading | None:
    """An attempt's cgroup v2 directory: its CPU from ``cpu.stat``, its memory from
    ``memory.current`` or, without the memory controller, its processes' resident sets."""
    try:
        stat = (path / "cpu.stat").read_text()
    except OSError:
        return None
    usec = 0
    for line in stat.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            usec = int(value)
    try:
        rss = int((path / "memory.current").read_text())
    except (OSError, ValueError):
        rss = 0
        try:
            pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            pids = []
        for pid in pids:
            fields = stat_fields(pid)
            if fields is not None and len(fields) >= 22:
                rss += _cpu_and_rss(fields)[1]
    return Reading(usec / 1_000_000, rss)


def stats_reading(stats: Mapping[str, Any]) -> Reading | None:
    """A Docker/Podman stats answer (``GET /containers/<id>/stats?stream=false``) as a reading:
    CPU from ``cpu_stats.cpu_usage.total_usage`` (nanoseconds), memory as ``docker stats`` counts
    it, the usage less the inactive page cache (``total_inactive_file`` on cgroup v1,
    ``inactive_file`` on v2). None for a container that no longer runs (no usage)."""
    memory = stats.get("memory_stats") or {}
    usage = memory.get("usage")
    if not isinstance(usage, int):
        return None
    detail = memory.get("stats") or {}
    cache = detail.get("total_inactive_file", detail.get("inactive_file", 0))
    cpu = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage") or 0
    return Reading(cpu_seconds=int(cpu) / 1e9, rss_bytes=max(usage - int(cache or 0), 0))


class ResourceSampler:
    """Turns readings into points (``sys.cpu``, ``sys.cpu_seconds``, ``sys.rss_bytes``, and
    ``sys.gpu``, ``sys.gpu_memory_bytes`` where the attempt has GPUs) and keeps the peaks. A
    point's step is the second (since the epoch) it was taken at: it grows across an
    executor restart, so a reader that keeps the latest value by step takes the new ones."""

    def __init__(
        self,
        read: Reader,
        every_seconds: float,
        clock: Callable[[], float] = time.time,
        gpu: GpuRead | None = None,
        idle_seconds: float = 0.0,
    ) -> None:
        self.read = read
        self.every = every_seconds
        # a sample like the last one sent waits up to this long (0: every sample is sent)
        self.idle_seconds = idle_seconds
        self._sent: tuple[float, dict[str, float]] | None = None  # (when, values) of the last sent
        self.clock = clock
        self.gpu = gpu  # the attempt's devices through NVML, where it has some (nvml.py)
        self.peak_rss_bytes = 0
        self.cpu_seconds = 0.0  # the latest reading's
        self.gpu_sampled = False
        self.gpu_seconds = 0.0  # GPU time in use so far: the samples' utilisation over time
        self.peak_gpu_memory_bytes = 0
        self._last: tuple[float, float] | None = None  # (when, cpu seconds)
        self._last_gpu: tuple[float, float] | None = None  # (when, GPUs busy)
        self._due = 0.0

    def due(self) -> bool:
        return self.clock() >= self._due

    def sample(self) -> MetricPoint | None:
        """A reading as a point, or None when there is nothing to read (the job is gone)."""
        reading = self.read()
        now = self.clock()  # after the read: the counters are of about now (a slow read skews less)
        self._due = now + self.every
        if reading is None:
            return None
        self.peak_rss_bytes = max(self.peak_rss_bytes, reading.rss_bytes)
        self.cpu_seconds = max(self.cpu_seconds, reading.cpu_seconds)
        values = {CPU_SECONDS: reading.cpu_seconds, RSS: float(reading.rss_bytes)}
        if reading.cpu_cores is not None:
            values[CPU] = reading.cpu_cores
        elif self._last is not None and now > self._last[0]:
            values[CPU] = max(reading.cpu_seconds - self._last[1], 0.0) / (now - self._last[0])
        self._last = (now, reading.cpu_seconds)
        gpu = self.gpu() if self.gpu is not None else None
        if gpu is not None:
            values[GPU], values[GPU_MEMORY] = gpu.busy, float(gpu.memory_bytes)
            self._take_gpu(now, gpu)
        return MetricPoint.model_construct(step=int(now), time=now, values=values)

    def worth_sending(self, point: MetricPoint) -> bool:
        """Whether a sample goes out on its own (without a report of the job's to ride with):
        the first, one that moved (``moved``), or one ``idle_seconds`` after the last sent; the
        ones between are read (peaks, CPU time) but not published. A steady job that reports
        nothing: one batch a minute instead of one per interval."""
        if self._sent is None or self.idle_seconds <= 0:
            return True
        when, values = self._sent
        return point.time - when >= self.idle_seconds or moved(values, point.values)

    def sent(self, point: MetricPoint) -> None:
        self._sent = (point.time, dict(point.values))

    def _take_gpu(self, now: float, gpu: GpuReading) -> None:
        """GPU time in use: each interval between two samples counts the mean of their
        utilisation (NVML's figure is of the last second or less: a job busy only between two
        samples is missed, one idle only between them is counted busy)."""
        self.gpu_sampled = True
        self.peak_gpu_memory_bytes = max(self.peak_gpu_memory_bytes, gpu.memory_bytes)
        if self._last_gpu is not None and now > self._last_gpu[0]:
            self.gpu_seconds += (self._last_gpu[1] + gpu.busy) / 2 * (now - self._last_gpu[0])
        self._last_gpu = (now, gpu.busy)


# how far a value moves before a sample is worth a message of its own: (absolute, relative)
_MOVES: dict[str, tuple[float, float]] = {
    CPU: (0.1, 0.1),  # a tenth of a core, or 10 %
    RSS: (8 * 1024 * 1024, 0.05),  # 8 MiB, or 5 %
    GPU: (0.1, 0.1),
    GPU_MEMORY: (64 * 1024 * 1024, 0.05),
}


def moved(before: Mapping[str, float], now: Mapping[str, float]) -> bool:
    """A value appeared or moved by more than both its absolute and relative step (CPU seconds
    always grow: not compared)."""
    for name, (absolute, relative) in _MOVES.items():
        if name not in now:
            continue
        if name not in before:
            return True
        step = abs(now[name] - before[name])
        if step > absolute and step > relative * abs(before[name]):
            return True
    return False


def with_samples(usage: AttemptUsage | None, sampler: ResourceSampler | None) -> AttemptUsage | None:
    """The attempt's use at its end (the rank supervisors' ``wait4``) with what sampling saw: the
    larger CPU time and peak (the processes together can hold more than the largest one alone).
    A rank killed with its supervisor (the memory limit) has no end measure: the samples are it."""
    if sampler is None or not sampler.peak_rss_bytes:
        return usage
    gpu: dict[str, Any] = {}
    if sampler.gpu_sampled:  # GPU figures only from samples (NVML): none at the end
        gpu = {"gpu_seconds": sampler.gpu_seconds, "peak_gpu_memory_bytes": sampler.peak_gpu_memory_bytes}
    sampled = AttemptUsage(cpu_seconds=sampler.cpu_seconds, peak_memory_bytes=sampler.peak_rss_bytes, **gpu)
    if usage is None:
        return sampled
    return AttemptUsage(
        cpu_seconds=max(usage.cpu_seconds, sampled.cpu_seconds),
        peak_memory_bytes=max(usage.peak_memory_bytes, sampled.peak_memory_bytes),
        **gpu,
    )
