"""A backend that runs nothing: every attempt succeeds at once, without a process.

For measuring the orchestration itself (``make bench``: intake, records, events, commands,
heartbeats — everything but the fork) and for dry installs. Never the default: it is chosen
explicitly with ``TRAINYARD_EXECUTOR_BACKEND=noop``, and each attempt's log says it did not run.
"""

from __future__ import annotations

from trainyard_executor.backends.base import AttemptLaunch, AttemptOutcome, LineSink, Resources


class NoopAttempt:
    pid: int | None = None

    def __init__(self, launch: AttemptLaunch) -> None:
        self.launch = launch
        self._cancelled = False

    async def wait(self) -> AttemptOutcome:
        output_dir = self.launch.workdir / self.launch.output_subdir
        if self._cancelled:
            return AttemptOutcome("cancelled", None, "cancelled", output_dir)
        return AttemptOutcome("succeeded", 0, "exit code 0 (noop backend: nothing was run)", output_dir)

    async def cancel(self, grace_s: float | None = None) -> None:
        self._cancelled = True


class NoopBackend:
    name = "noop"

    def __init__(self, capacity: Resources) -> None:
        self._capacity = capacity

    async def start(self, launch: AttemptLaunch, on_line: LineSink) -> NoopAttempt:
        return NoopAttempt(launch)

    def capacity(self) -> Resources:
        return self._capacity
