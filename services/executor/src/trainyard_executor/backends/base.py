"""One protocol for every backend: start an attempt, stream its lines, wait, cancel with grace."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

OutcomeKind = Literal["succeeded", "failed", "timed_out", "cancelled"]
LineSink = Callable[[str, str], Awaitable[None]]


@dataclass(frozen=True)
class Resources:
    cpu: float
    memory_mb: int
    gpu: int


@dataclass(frozen=True)
class AttemptLaunch:
    job_id: str
    attempt: int
    argv: list[str]
    env: dict[str, str]
    workdir: Path
    timeout_s: float | None
    source_repo: str | None = None
    source_commit: str | None = None
    runtime_pip: tuple[str, ...] = ()
    output_subdir: str = "outputs"
    grace_s: float = 10.0


@dataclass(frozen=True)
class AttemptOutcome:
    kind: OutcomeKind
    exit_code: int | None
    reason: str
    output_dir: Path


class RunningAttempt(Protocol):
    pid: int | None

    async def wait(self) -> AttemptOutcome: ...

    async def cancel(self, grace_s: float | None = None) -> None: ...


class Backend(Protocol):
    name: str

    async def start(self, launch: AttemptLaunch, on_line: LineSink) -> RunningAttempt: ...

    def capacity(self) -> Resources: ...
