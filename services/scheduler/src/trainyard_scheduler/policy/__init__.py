"""The scheduler's pure policy: queues, fair share, gangs, backfill with a reservation, preemption.

Nothing here touches a broker, a clock or a file: the service builds a ``Snapshot``, ``plan``
decides, the service applies the ``Plan``. The simulator and the benchmark drive the same code.
"""

from trainyard_scheduler.policy.model import (
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
)
from trainyard_scheduler.policy.planner import plan, queue_order

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
