"""An executor for tests that run jobs (test kit, imported by test modules in any folder).

Short heartbeats, leases and grace so a test sees a lost executor or a stopped attempt in seconds,
and room for a few small jobs. Any setting can be overridden by keyword.
"""

from __future__ import annotations

from typing import Any

from faststream.asgi import AsgiFastStream

from trainyard_executor.app import create_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_shared.settings import CommonSettings

QUICK = {
    "cpu": 4,
    "memory": 8192,
    "gpu": 0,
    "heartbeat_seconds": 0.5,
    "lease_seconds": 3,
    "grace_seconds": 2,
}


def quick_executor_settings(executor_id: str = "exec-a", **overrides: Any) -> ExecutorSettings:
    return ExecutorSettings(**{"id": executor_id, **QUICK, **overrides})


def quick_executor(common: CommonSettings, executor_id: str = "exec-a", **overrides: Any) -> AsgiFastStream:
    return create_app(common, quick_executor_settings(executor_id, **overrides))
