"""The placement policy's entry point: ``plan(snapshot, now) -> Plan``, a pure function.

No broker, no clock, no I/O: the service builds the snapshot, this decides, the service applies
the decisions by compare-and-set. The same function drives tests, benchmarks and the simulator.
The policy itself lives in ``trainyard_scheduler.policy`` (see docs/scheduling.md); this module
keeps the names the service imports.
"""

from __future__ import annotations

from trainyard_scheduler.policy import (
    Assignment,
    Demand,
    ExecutorFree,
    PendingJob,
    Plan,
    RankPlacement,
    Reservation,
    RunningJob,
    Snapshot,
    Victim,
    Waiting,
    WaitKind,
    WaitReason,
    plan,
    queue_order,
)

__all__ = [
    "Assignment",
    "Demand",
    "ExecutorFree",
    "PendingJob",
    "Plan",
    "RankPlacement",
    "Reservation",
    "RunningJob",
    "Snapshot",
    "Victim",
    "WaitKind",
    "WaitReason",
    "Waiting",
    "plan",
    "queue_order",
]
