"""Where a service's handlers find its runtime, which exists only once the broker has connected.

A faststream app declares its handlers before it starts, but what they call (the core, the views,
the lease) is built in the start-up hook from live buckets. Each service builds one typed
``Runtime`` dataclass there and puts it in a ``RuntimeSlot``; the handlers, the shutdown hook and
tests (``app.context.get("runtime").get()``) read it back, typed.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")
RUNTIME = "runtime"  # the key of the slot in a faststream app's context


class NotStarted(RuntimeError):
    """The service's start-up hook has not built its runtime (yet, or it failed)."""


class RuntimeSlot(Generic[T]):
    def __init__(self, service: str) -> None:
        self.service = service
        self._runtime: T | None = None

    def set(self, runtime: T) -> None:
        self._runtime = runtime

    def get(self) -> T:
        if self._runtime is None:
            raise NotStarted(f"the {self.service} service has not started: its runtime is not built")
        return self._runtime

    @property
    def started(self) -> bool:
        return self._runtime is not None
