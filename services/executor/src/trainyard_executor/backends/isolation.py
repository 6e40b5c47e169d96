"""What each backend keeps a job from, as configured and found here: the summary an executor puts
in its heartbeat (``ExecutorHeartbeat.isolation``), shown by ``trainyard executors``."""

from __future__ import annotations

import os

from trainyard_contracts import Isolation

from .cgroups import Containment
from .container_security import identity
from .jobusers import JobUsers


def local_isolation(containment: Containment, users: JobUsers | None) -> Isolation:
    if users is not None:
        who, root = users.describe(), False
    else:
        root = os.geteuid() == 0
        who = "root (the executor's user)" if root else f"uid {os.geteuid()} (the executor's user)"
    notes = [] if containment.kind == "cgroup" else [f"no cgroup v2: {containment.reason}"]
    if users is None:
        notes.append("jobs share the executor's user: they read what it can")
    return Isolation(
        job_user=who,
        root=root,
        containment="cgroup v2 per attempt" if containment.kind == "cgroup" else "process group per rank",
        gang_network="loopback of the host (ranks reach every local service)",
        notes=notes,
    )


def container_isolation(engine: str, user: tuple[int, int], pids_limit: int) -> Isolation:
    who = identity(False, user, (os.geteuid(), os.getegid())).user
    return Isolation(
        job_user=f"container uid:gid {who}",
        root=False,
        containment=f"{engine} container (pids limit {pids_limit})",
        capabilities="all dropped",
        no_new_privileges=True,
        gang_network="a bridge network per gang (a gang split across executors: the host network)",
        notes=["a queue with allow_root may run its containers as the image's user (root, without MKNOD)"],
    )


def kube_isolation(run_as_user: int | None, automount_token: bool) -> Isolation:
    notes = ["the container's env values are plain values in the Job object"]
    if automount_token:
        notes.append("job pods mount the service account token")
    return Isolation(
        job_user=f"pod uid {run_as_user}" if run_as_user is not None else "the image's user",
        root=run_as_user is None or run_as_user == 0,
        containment="pod",
        capabilities="all dropped",
        no_new_privileges=True,
        gang_network="a network policy per gang (ingress from its own pods only)",
        notes=notes,
    )
