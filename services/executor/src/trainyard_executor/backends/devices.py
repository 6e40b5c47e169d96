"""Which GPUs a rank sees: the variables that expose only its own devices (pure).

The scheduler assigns an attempt its device indices per executor (``JobRecord.gpu_devices``); a
gang's ranks on one executor split them in local-rank order, ``gpu`` per rank.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["attempt_devices", "rank_devices", "visible_devices_env"]


def attempt_devices(
    assigned: Sequence[int], gpu_per_replica: int, machine_has_gpus: bool
) -> tuple[int, ...] | None:
    """The devices an attempt's ranks here may use: those assigned; none for a job without GPUs
    on a machine that has some; None when nothing was assigned (an older scheduler, or devices
    this executor does not report): the backend then counts GPUs as before."""
    if gpu_per_replica == 0:
        return () if machine_has_gpus else None
    return tuple(assigned) if assigned else None


def rank_devices(devices: Sequence[int], gpu_per_replica: int, local_rank: int) -> tuple[int, ...]:
    """Local rank ``local_rank``'s own slice of the attempt's devices on this executor."""
    first = local_rank * gpu_per_replica
    return tuple(devices[first : first + gpu_per_replica])


def visible_devices_env(devices: Sequence[int]) -> dict[str, str]:
    """CUDA's and the NVIDIA runtime's variables for exactly ``devices`` (none: no device)."""
    listed = ",".join(str(d) for d in devices)
    return {"CUDA_VISIBLE_DEVICES": listed, "NVIDIA_VISIBLE_DEVICES": listed or "void"}
