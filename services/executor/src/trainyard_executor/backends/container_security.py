"""What a job's container may do: its user, capabilities, privileges and process count (pure).

By default a container runs as a fixed non-root uid:gid (``TRAINYARD_EXECUTOR_CONTAINER_UID/GID``,
10001:10001, an id no host account should have), with every capability dropped,
``no-new-privileges`` (set-user-ID bits and file capabilities are ignored at exec) and a pids
limit. A spec that says ``run_as_root: true`` (accepted only by a queue with ``allow_root``) runs
as the image's own user with the engine's default capabilities except ``MKNOD`` (a device node
made in the work dir would be a device on the host), still without new privileges and with the
pids limit. Seccomp and AppArmor stay at the engine's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_PIDS_LIMIT", "DEFAULT_UID", "Identity", "hardening", "identity", "work_mount_mode"]

DEFAULT_UID = 10001
DEFAULT_PIDS_LIMIT = 4096


@dataclass(frozen=True)
class Identity:
    user: str | None
    """``uid:gid`` for the engine; None: the image's own user (root for most images)."""
    owner: tuple[int, int] | None
    """Who the executor gives the job's directories to; None: nothing changes hands."""


def identity(run_as_root: bool, configured: tuple[int, int], executor: tuple[int, int]) -> Identity:
    """Who a container runs as. An executor that is not root cannot give directories away, so its
    containers run as its own uid:gid (which owns the work dir already)."""
    if run_as_root:
        return Identity(user=None, owner=None)
    if executor[0] != 0:
        return Identity(user=f"{executor[0]}:{executor[1]}", owner=None)
    return Identity(user=f"{configured[0]}:{configured[1]}", owner=configured)


def hardening(run_as_root: bool, pids_limit: int) -> dict[str, Any]:
    """The ``containers.create`` arguments that take privileges away."""
    return {
        "cap_drop": ["MKNOD"] if run_as_root else ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": pids_limit,
    }


def work_mount_mode(engine: str) -> str:
    """Bind mount options. Podman takes ``nosuid,nodev``; Docker refuses them on a bind ("invalid
    mode"): there ``no-new-privileges`` stands in for nosuid and the dropped ``MKNOD`` plus the
    device cgroup for nodev."""
    return "rw,nosuid,nodev" if engine == "podman" else "rw"


def inputs_mount_mode(engine: str) -> str:
    """The inputs folder's bind mount ($TRAINYARD_INPUTS): read-only, else as :func:`work_mount_mode`."""
    return "ro,nosuid,nodev" if engine == "podman" else "ro"
