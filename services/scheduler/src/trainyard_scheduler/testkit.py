"""A scheduler for tests that run jobs (test kit, imported by test modules in any folder).

It plans every 0.2 s and waits 1 s for a submitted job's record before it treats the event as
early, so a test's job is placed in well under a second. Any setting can be overridden by keyword.
"""

from __future__ import annotations

from typing import Any

from faststream.asgi import AsgiFastStream

from trainyard_scheduler.app import create_app
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_shared.settings import CommonSettings

QUICK = {"tick_seconds": 0.2, "submitted_grace_seconds": 1}


def quick_scheduler(common: CommonSettings, **overrides: Any) -> AsgiFastStream:
    return create_app(common, SchedulerSettings(**{**QUICK, **overrides}))
