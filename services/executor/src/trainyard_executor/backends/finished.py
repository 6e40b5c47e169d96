"""An attempt that ended before anything ran: what every backend returns when it cannot start one."""

from __future__ import annotations

from pathlib import Path

from trainyard_executor.backends.base import AttemptOutcome


class FinishedAttempt:
    """An attempt that ended before a container ran (no image, refused by the engine, ...)."""

    pid: int | None = None
    container_id: str | None = None

    def __init__(self, reason: str, output_dir: Path, exit_code: int | None = None) -> None:
        self.outcome = AttemptOutcome("failed", exit_code, reason, output_dir)

    async def wait(self) -> AttemptOutcome:
        return self.outcome

    async def cancel(self, grace_s: float | None = None) -> None:
        return None

    async def release(self) -> None:
        return None
