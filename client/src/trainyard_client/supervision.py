"""When the embedded stack restarts a process that exited, and when it gives up (pure, no I/O).

As systemd's ``Restart=on-failure`` with ``StartLimitBurst``/``StartLimitIntervalSec`` or a
Kubernetes Deployment's crash-loop back-off would: a process that exits while the stack runs is
started again after a growing delay; one that has been restarted ``limit`` times within
``window_seconds`` and exits again is given up on, and the stack stops.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RestartPolicy:
    limit: int = 5
    """restarts of one process allowed within ``window_seconds``; one more exit stops the stack"""
    window_seconds: float = 60.0
    backoff_seconds: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    """the delay before the 1st, 2nd, ... restart within the window; the last one repeats"""

    def __post_init__(self) -> None:
        if self.limit < 0:
            raise ValueError(f"restart limit must be 0 or more, got {self.limit}")
        if self.window_seconds <= 0:
            raise ValueError(f"restart window must be positive, got {self.window_seconds}")
        if not self.backoff_seconds or min(self.backoff_seconds) < 0:
            raise ValueError(f"restart backoff needs delays of 0 or more, got {self.backoff_seconds}")


@dataclass(frozen=True)
class Restart:
    """One exit the stack answered with a restart (or, ``given_up``, with stopping)."""

    service: str
    exit_code: int | None
    number: int
    """this process's restarts within the window, this one included (0 when given up)"""
    delay_seconds: float
    limit: int
    """the policy's restarts allowed within its window"""
    given_up: bool = False


@dataclass
class RestartBook:
    """Each process's recent restarts, and what to do about its next exit."""

    policy: RestartPolicy = field(default_factory=RestartPolicy)
    _history: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def exited(self, service: str, exit_code: int | None, now: float) -> Restart:
        """``service`` exited at ``now`` (monotonic seconds): restart it after a delay, or give up."""
        recent = [t for t in self._history[service] if now - t < self.policy.window_seconds]
        self._history[service] = recent
        if len(recent) >= self.policy.limit:
            return Restart(service, exit_code, 0, 0.0, self.policy.limit, given_up=True)
        backoff = self.policy.backoff_seconds
        delay = backoff[min(len(recent), len(backoff) - 1)]
        recent.append(now)
        return Restart(service, exit_code, len(recent), delay, self.policy.limit)
