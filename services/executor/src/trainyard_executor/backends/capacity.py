"""What a machine offers local jobs: CPUs this process may use, memory, GPUs."""

from __future__ import annotations

import os
import shutil
import subprocess

from .base import Resources

__all__ = ["detect_capacity"]


def detect_capacity() -> Resources:
    """CPUs this process may run on, total memory (/proc/meminfo), GPUs (``nvidia-smi -L``)."""
    return Resources(cpu=float(_cpu_count()), memory_mb=_memory_mb(), gpu=_gpu_count())


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _memory_mb() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1024 * 1024)
    except (ValueError, OSError):
        return 0


def _gpu_count() -> int:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        res = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0
    if res.returncode != 0:
        return 0
    return sum(1 for line in res.stdout.splitlines() if line.startswith("GPU "))
