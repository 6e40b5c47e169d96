"""Trainyard's CLI (``trainyard``) and Python SDK (:class:`TrainyardClient`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainyard_client.sdk import (
        JobSummary,
        LogEvent,
        SubmitResult,
        TrainyardClient,
        TrainyardError,
        TrainyardUnavailable,
    )

__all__ = [
    "JobSummary",
    "LogEvent",
    "SubmitResult",
    "TrainyardClient",
    "TrainyardError",
    "TrainyardUnavailable",
]


def __getattr__(name: str) -> Any:
    # the SDK (httpx, pydantic, the contracts) loads on first use, not when the CLI starts
    if name in __all__:
        from trainyard_client import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
