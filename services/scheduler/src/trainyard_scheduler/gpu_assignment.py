"""Which GPUs an attempt gets: pure, from a snapshot of an executor's devices and those held.

An executor reports its devices by index (heartbeat ``gpus``); an attempt placed on it with
``gpu > 0`` per replica gets that many per rank it runs there, chosen from the devices no live
attempt on that executor holds (running, scheduled, or ended in the record while its process may
still run), lowest indices first. An executor that reports no devices (an older executor, a
kubernetes pool whose device plugin assigns them) gets no indices: its backend counts as before.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from trainyard_contracts import ExecutorHeartbeat, JobRecord
from trainyard_contracts.records import GangPlacement

__all__ = [
    "NotEnoughDevices",
    "assign_devices",
    "free_devices",
    "placement_needs",
    "reported_devices",
    "with_gang_devices",
]


class NotEnoughDevices(Exception):
    """Fewer free devices on an executor than the placement needs there (the records and the
    reported device list disagree with the capacity count): the attempt is not placed there now."""

    def __init__(self, executor_id: str, needed: int, free: Sequence[int]) -> None:
        super().__init__(f"executor {executor_id}: {needed} GPU(s) needed, free: {list(free)}")
        self.executor_id = executor_id
        self.needed = needed
        self.free = tuple(free)


def free_devices(devices: Iterable[int], held: Collection[int]) -> tuple[int, ...]:
    """The reported device indices no live attempt holds, lowest first."""
    return tuple(sorted(set(devices) - set(held)))


def assign_devices(
    needs: Mapping[str, int],
    devices: Mapping[str, Sequence[int]],
    held: Mapping[str, Collection[int]],
) -> dict[str, tuple[int, ...]]:
    """For each executor of one attempt's placement (``needs``: executor -> GPUs it runs there,
    ranks there times gpu per replica), the lowest free device indices. Executors without a
    reported device list, or needing none, get nothing. Raises NotEnoughDevices when an executor
    has fewer free devices than it needs."""
    chosen: dict[str, tuple[int, ...]] = {}
    for executor_id, needed in needs.items():
        reported = devices.get(executor_id)
        if needed <= 0 or not reported:
            continue
        free = free_devices(reported, held.get(executor_id, ()))
        if len(free) < needed:
            raise NotEnoughDevices(executor_id, needed, free)
        chosen[executor_id] = free[:needed]
    return chosen


def placement_needs(record: JobRecord, executor_id: str, gang: GangPlacement | None) -> dict[str, int]:
    """Executor -> GPUs one attempt of ``record`` uses there: every replica on ``executor_id``, or
    each member's ranks of a split gang."""
    per_replica = record.spec.resources.gpu
    if gang is None:
        return {executor_id: per_replica * record.spec.replicas}
    return {m.executor_id: per_replica * len(m.ranks) for m in gang.members}


def reported_devices(online: Mapping[str, ExecutorHeartbeat]) -> dict[str, list[int]]:
    """Executor -> the device indices its heartbeat lists."""
    return {eid: [g.index for g in beat.gpus] for eid, beat in online.items() if beat.gpus}


def with_gang_devices(
    gang: GangPlacement | None, chosen: Mapping[str, Sequence[int]]
) -> GangPlacement | None:
    """The split gang's placement with each member's assigned devices."""
    if gang is None:
        return None
    members = [m.model_copy(update={"gpus": list(chosen.get(m.executor_id, ()))}) for m in gang.members]
    return gang.model_copy(update={"members": members})
