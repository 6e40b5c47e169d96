"""Executor backends: run one attempt of a job somewhere and report how it ended."""

from .base import (
    AttemptLaunch,
    AttemptOutcome,
    Backend,
    LineSink,
    OutcomeKind,
    Resources,
    RunningAttempt,
)
from .local import LocalAttempt, LocalBackend
from .runtime_env import RuntimeEnvCache, RuntimeEnvError
from .source import SourceError, checkout

__all__ = [
    "AttemptLaunch",
    "AttemptOutcome",
    "Backend",
    "LineSink",
    "LocalAttempt",
    "LocalBackend",
    "OutcomeKind",
    "Resources",
    "RunningAttempt",
    "RuntimeEnvCache",
    "RuntimeEnvError",
    "SourceError",
    "checkout",
]
