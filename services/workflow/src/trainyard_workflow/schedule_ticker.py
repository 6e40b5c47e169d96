"""The schedule ticker: one replica (the holder of the ``workflow-schedules`` lease) runs a pass
over every schedule each ``schedule_tick_seconds``. Exactly-once does not rest on the lease (see
schedules.py); the lease keeps replicas from racing over every key on every pass."""

from __future__ import annotations

import asyncio
import logging

from trainyard_shared.leader import LeaderLease
from trainyard_shared.natsusers import SCHEDULE_LEASE_KEY
from trainyard_shared.tasks import cancel_and_wait
from trainyard_workflow.schedules import ScheduleService

log = logging.getLogger("trainyard.workflow.schedules")


class ScheduleTicker:
    def __init__(self, schedules: ScheduleService, lease: LeaderLease, every: float) -> None:
        self.schedules, self.lease, self.every = schedules, lease, every
        self.task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self.lease.start()
        self.task = asyncio.create_task(self._run(), name="workflow-schedule-ticker")

    async def stop(self) -> None:
        self._stopping = True
        await cancel_and_wait(self.task)
        await self.lease.stop(release=True)

    async def _run(self) -> None:
        # ends on _stopping too: Python 3.11's wait_for (inside nats-py's requests) can drop a
        # cancel that lands as an answer arrives, and the loop would go on after stop()
        while not self._stopping:
            if self.lease.is_leader:
                try:
                    await self.schedules.tick()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("a schedule pass failed; trying again")
            await asyncio.sleep(self.every)


__all__ = ["SCHEDULE_LEASE_KEY", "ScheduleTicker"]
