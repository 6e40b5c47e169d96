"""The ticker: one replica (the holder of the ``workflow-schedules`` lease) runs its passes each
``schedule_tick_seconds``: every schedule's due ticks, every trigger's due fires (debounce windows
that closed, fires a restart left). Exactly-once does not rest on the lease (see schedules.py,
triggers.py); the lease keeps replicas from racing over every key on every pass."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from trainyard_shared.leader import LeaderLease
from trainyard_shared.natsusers import SCHEDULE_LEASE_KEY
from trainyard_shared.tasks import cancel_and_wait

log = logging.getLogger("trainyard.workflow.schedules")


Pass = Callable[[], Awaitable[Any]]


class ScheduleTicker:
    def __init__(self, passes: Sequence[Pass], lease: LeaderLease, every: float) -> None:
        self.passes, self.lease, self.every = list(passes), lease, every
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
            for one_pass in self.passes if self.lease.is_leader else ():
                try:
                    await one_pass()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("a ticker pass failed; trying again", extra={"pass": repr(one_pass)})
            await asyncio.sleep(self.every)


__all__ = ["SCHEDULE_LEASE_KEY", "ScheduleTicker"]
