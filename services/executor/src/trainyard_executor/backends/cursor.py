"""The log cursor every backend keeps: how far each stream of an attempt has been shipped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping


async def keep_cursor(
    consumed: Callable[[], Mapping[str, int]], write: Callable[[Mapping[str, int]], None], every_s: float
) -> None:
    """Write ``consumed()`` every ``every_s`` seconds, one period behind: the lines delivered in
    the last period may still sit in the shipper's batch, and after a crash they are sent again
    rather than lost (at least once). Runs until cancelled."""
    shipped = dict(consumed())
    while True:
        await asyncio.sleep(every_s)
        write(shipped)
        shipped = dict(consumed())
