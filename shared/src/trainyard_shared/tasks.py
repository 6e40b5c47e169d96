"""Stopping a background task for sure: cancel it again until it has ended.

Python 3.11's ``asyncio.wait_for`` (used inside nats-py's requests) returns the answer instead of
raising ``CancelledError`` when a cancel lands just as the answer arrives (bpo-42130, fixed in
3.12). A loop stopped by one ``task.cancel()`` then goes on; a shutdown that awaits it hangs, and
a test that "crashes" a replica by cancelling it sees the replica live on. Every loop also checks
a stop flag of its own; this is the second half: cancel, wait a moment, cancel again, within a
deadline, so no stop hangs on one lost cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger("trainyard.tasks")

RECANCEL_SECONDS = 0.1  # how long one cancel is given before the next


async def cancel_and_wait(task: asyncio.Task[Any] | None, timeout: float = 30.0) -> bool:
    """Cancel ``task`` (again and again) until it has ended; True once it has, False when it
    still runs after ``timeout`` (logged: something in it ignores cancels altogether)."""
    if task is None:
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done():
        left = deadline - loop.time()
        if left <= 0:
            log.error("a task ignored its cancels", extra={"task": task.get_name(), "timeout": timeout})
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(RECANCEL_SECONDS, left))
    if not task.cancelled():
        with contextlib.suppress(Exception):
            task.exception()  # retrieved: no "exception was never retrieved" at collection
    return True


__all__ = ["cancel_and_wait"]
