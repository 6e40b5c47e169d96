"""Trainyard's CLI (``trainyard``) and Python SDK (:class:`TrainyardClient`)."""

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
