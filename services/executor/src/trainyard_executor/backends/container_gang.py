"""A gang's containers on one engine as one attempt (the docker and podman backends)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from trainyard_executor.backends.base import AttemptLaunch, AttemptOutcome
from trainyard_executor.sampling import Reading

if TYPE_CHECKING:
    from trainyard_executor.backends.container_attempt import ContainerAttempt

__all__ = ["GangAttempt"]


class GangAttempt:
    """The containers of one attempt's ranks, as one attempt: it succeeds when every rank exits
    0 and fails with the first rank that fails (the others are stopped); timeout and cancel stop
    every rank."""

    def __init__(
        self,
        launch: AttemptLaunch,
        output_dir: Path,
        members: list[ContainerAttempt],
        network: str | None = None,
    ) -> None:
        self.launch = launch
        self.network = network
        self.output_dir = output_dir
        self.members = members
        self.pid: int | None = members[0].pid
        self.container_ids = [m.container_id for m in members]
        self.container_id = self.container_ids[0]
        self._cancelled = False
        self._cpu_seconds: dict[int, float] = {}  # rank index -> its container's latest CPU seconds
        self._reading = threading.Lock()
        self._task = asyncio.create_task(self._run(), name=f"gang-{launch.job_id}-{launch.attempt}")

    async def _run(self) -> AttemptOutcome:
        waits = {asyncio.ensure_future(m.wait()): m for m in self.members}
        outcomes: dict[int, AttemptOutcome] = {}
        first_failure: tuple[ContainerAttempt, AttemptOutcome] | None = None
        pending = set(waits)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                member, outcome = waits[task], task.result()
                outcomes[id(member)] = outcome
                if outcome.kind != "succeeded" and first_failure is None and not self._cancelled:
                    first_failure = (member, outcome)
                    for other in self.members:
                        if id(other) not in outcomes:
                            await other.cancel(self.launch.grace_s)
        out = self.output_dir
        first = outcomes[id(self.members[0])]
        if self._cancelled:
            return AttemptOutcome("cancelled", first.exit_code, "cancelled", out)
        if first_failure is not None:
            member, outcome = first_failure
            if outcome.kind == "timed_out":
                return AttemptOutcome("timed_out", outcome.exit_code, outcome.reason, out)
            return AttemptOutcome("failed", outcome.exit_code, f"rank {member.rank}: {outcome.reason}", out)
        return AttemptOutcome("succeeded", 0, "exit code 0", out)

    def read_usage(self) -> Reading | None:
        """(Blocking: the metrics shipper calls it in a worker thread, once per sample interval.)
        The gang's containers together, each read through its engine's stats as a single
        container is (sampling.py): memory is the sum of the ranks' now, CPU seconds the sum of
        each rank's latest, so a rank that exited first keeps what it used. The ranks are read at
        once (a stats answer takes the engine a second or two). None when no rank answers."""
        with self._reading, ThreadPoolExecutor(len(self.members), thread_name_prefix="gang-stats") as pool:
            readings = list(pool.map(lambda m: m.read_usage(), self.members))
            rss, seen = 0, False
            for index, reading in enumerate(readings):
                if reading is None:
                    continue
                self._cpu_seconds[index] = max(self._cpu_seconds.get(index, 0.0), reading.cpu_seconds)
                rss, seen = rss + reading.rss_bytes, True
            return Reading(sum(self._cpu_seconds.values()), rss) if seen else None

    async def wait(self) -> AttemptOutcome:
        return await asyncio.shield(self._task)

    async def cancel(self, grace_s: float | None = None) -> None:
        self._cancelled = True
        for member in self.members:
            await member.cancel(grace_s)

    async def release(self) -> None:
        await asyncio.gather(*(m.release() for m in self.members))
        if self.network is not None:
            await self.members[0].backend.drop_network(self.network)

    async def detach(self) -> None:
        self._task.cancel()
        await asyncio.gather(*(m.detach() for m in self.members))
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
