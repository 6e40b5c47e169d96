"""The GPUs of this machine, by index and UUID, as ``nvidia-smi`` reports them.

The scheduler hands each attempt its own devices from this list (the heartbeat's ``gpus``); the
parser is pure, ``discover_gpus`` runs the configured command.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess

from trainyard_contracts import GpuDevice

__all__ = [
    "DISCOVERING_BACKENDS",
    "QUERY_ARGS",
    "GpuSettingError",
    "advertised_gpus",
    "discover_gpus",
    "parse_gpu_query",
]

log = logging.getLogger("trainyard.executor")

QUERY_ARGS = ("--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader,nounits")
# the backends whose jobs run on this machine's devices; a kubernetes pool's device plugin
# assigns its nodes' GPUs, and noop runs nothing
DISCOVERING_BACKENDS = frozenset({"local", "docker", "podman"})
MAX_DEVICES = 1024


class GpuSettingError(ValueError):
    """TRAINYARD_EXECUTOR_GPU asks for more devices than the machine has."""


def parse_gpu_query(text: str) -> list[GpuDevice]:
    """Devices from ``nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader``
    output, ordered by index; a line that is not ``index, uuid, ...`` is skipped."""
    found: dict[int, GpuDevice] = {}
    for line in text.splitlines()[:MAX_DEVICES]:
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 2 or not fields[0].isdigit() or not fields[1]:
            continue
        index = int(fields[0])
        found.setdefault(index, GpuDevice(index=index, uuid=fields[1][:128]))
    return [found[i] for i in sorted(found)]


def discover_gpus(command: str, timeout: float = 10.0) -> list[GpuDevice]:
    """Run ``command`` (a path or a command line, e.g. ``nvidia-smi``) with the query arguments;
    no such program, a failure or a timeout mean no GPUs."""
    argv = shlex.split(command)
    exe = shutil.which(argv[0]) if argv else None
    if exe is None:
        return []
    try:
        res = subprocess.run(
            [exe, *argv[1:], *QUERY_ARGS], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("GPU discovery: %s failed: %s", exe, e)
        return []
    if res.returncode != 0:
        log.warning("GPU discovery: %s exited %d: %s", exe, res.returncode, res.stderr.strip()[:500])
        return []
    return parse_gpu_query(res.stdout)


def advertised_gpus(backend: str, setting: int | None, found: list[GpuDevice]) -> list[GpuDevice] | None:
    """The devices this executor offers: all it found, or the first ``setting`` of them by index.
    None for a backend that does not discover (its count is the setting: a pool quota).
    Asking for more than were found is an error naming the setting."""
    if backend not in DISCOVERING_BACKENDS:
        return None
    if setting is None:
        return found
    if setting > len(found):
        raise GpuSettingError(
            f"TRAINYARD_EXECUTOR_GPU={setting} but {len(found)} GPU(s) were found on this machine "
            "(TRAINYARD_EXECUTOR_NVIDIA_SMI); a local, docker or podman executor offers only devices it has"
        )
    return found[:setting]
