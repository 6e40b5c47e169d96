"""The planning loop: every replica runs it; only the leader's passes plan, apply and reconcile.

A pass is woken by the job view (a job became pending, ended, or freed room), by a new leader
term, or by the tick; an announcement owed after a failed publish is retried when it is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from trainyard_scheduler.core import SchedulerCore
from trainyard_scheduler.leader import LeaderLease
from trainyard_scheduler.policy import Plan
from trainyard_scheduler.settings import SchedulerSettings

log = logging.getLogger("trainyard.scheduler")
# (decisions, cycle number, seconds the pass took) -> the cycle's decisions event is published
PublishCycle = Callable[[Plan, int, float], Awaitable[None]]
RECONCILE_EVERY_TICKS = 5


class PlanningLoop:
    def __init__(
        self,
        core: SchedulerCore,
        lease: LeaderLease,
        settings: SchedulerSettings,
        wake: asyncio.Event,
        publish_cycle: PublishCycle,
    ) -> None:
        self.core = core
        self.lease = lease
        self.settings = settings
        self.wake = wake
        self.publish_cycle = publish_cycle
        self.cycle = 0  # passes that decided something, numbered for the decisions events
        self.stopping = False
        self.task: asyncio.Task[None] | None = None
        self._term = 0
        self._next_reconcile = 0.0

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name="planning-loop")

    async def stop(self) -> None:
        """Let a pass in flight finish its announcements (bounded by the lease time)."""
        self.stopping = True
        self.wake.set()
        if self.task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self.task, self.settings.lease_seconds)

    async def run(self) -> None:
        while not self.stopping:
            owed = self.core.unconfirmed.next_due()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.wake.wait(), min(self.settings.tick_seconds, owed if owed is not None else 1e9)
                )
            self.wake.clear()
            if self.stopping:
                continue
            if owed is not None:  # the writes stand whoever leads now: what they owe follows them
                try:
                    await self.core.retry_unconfirmed()
                except Exception:
                    log.exception("retrying unconfirmed announcements failed")
            if not self.lease.is_leader:
                continue
            try:
                await self.leader_pass()
            except Exception:
                log.exception("planning pass failed; retrying on the next tick")

    async def leader_pass(self) -> None:
        loop = asyncio.get_running_loop()
        takeover = self.lease.term != self._term
        if takeover:  # a new term: see the last leader's writes before planning on them
            if not await self.core.catch_up(self.settings.lease_seconds):
                log.warning("job view not confirmed current after taking over; planning anyway")
            self._term = self.lease.term
        started = loop.time()
        decided = await self.core.plan_pass()
        if decided.assignments or decided.victims:  # a pass that changed nothing is no event
            self.cycle += 1
            await self.publish_cycle(decided, self.cycle, loop.time() - started)
        # by time, not by passes: under load a pass runs per few jobs, and a reconcile looks at
        # every live job
        if takeover or loop.time() >= self._next_reconcile:
            await self.core.reconcile(resend_scheduled=takeover)
            self._next_reconcile = loop.time() + RECONCILE_EVERY_TICKS * self.settings.tick_seconds
