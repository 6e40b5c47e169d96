"""Where a gang the policy split across executors meets: its rendezvous (pure)."""

from __future__ import annotations

import zlib

from trainyard_contracts.records import ExecutorHeartbeat, GangMember, GangPlacement, PortRange
from trainyard_scheduler.policy import (
    Assignment,
)


def rendezvous_port(job_id: str, attempt: int, ports: PortRange, taken: set[int]) -> int | None:
    """A split gang's MASTER_PORT: from a hash of job and attempt into the master executor's range,
    the next one up (wrapping) when another split gang on the same host has it. Deterministic, so
    two replicas deciding the same placement pick the same port; it is kept in the record."""
    span = ports.last - ports.first + 1
    start = zlib.crc32(f"{job_id}:{attempt}".encode()) % span
    for step in range(span):
        port = ports.first + (start + step) % span
        if port not in taken:
            return port
    return None


def split_placement(
    assignment: Assignment, online: dict[str, ExecutorHeartbeat], taken: dict[str, set[int]]
) -> GangPlacement | str:
    """The placement of a gang the policy split across executors, or why it cannot run split."""
    members = [p for p in assignment.ranks if p.ranks]
    master = next((p for p in members if 0 in p.ranks), None)
    if master is None:
        return "the gang's placement has no rank 0"
    for p in members:
        beat = online.get(p.executor_id)
        if beat is None:
            return f"executor {p.executor_id} is gone"
        if beat.backend in ("kubernetes", "kubeflow"):
            # a Kubernetes executor runs a gang as one Indexed Job, a Kubeflow one as one TrainJob:
            # all ranks or none
            return (
                f"the gang needs {assignment.world_size} ranks on one executor; {p.executor_id} runs "
                f"gangs whole ({beat.backend})"
            )
    beat = online[master.executor_id]
    if beat.advertise_host is None or beat.rendezvous_ports is None:
        return f"executor {master.executor_id} advertises no rendezvous address (an older version)"
    used = taken.setdefault(beat.advertise_host, set())
    port = rendezvous_port(assignment.job_id, assignment.attempt, beat.rendezvous_ports, used)
    if port is None:
        return f"every rendezvous port of {master.executor_id} is taken"
    used.add(port)
    ordered = [master, *(p for p in members if p is not master)]
    return GangPlacement(
        attempt=assignment.attempt,
        master_addr=beat.advertise_host,
        master_port=port,
        members=[GangMember(executor_id=p.executor_id, ranks=sorted(p.ranks)) for p in ordered],
    )
