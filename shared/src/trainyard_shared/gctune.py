"""The cyclic garbage collector of a long-running service process.

Measured on the job path (docs/performance.md, "Garbage collection"): with Python's defaults a
service spent a quarter of its CPU in the collector, mostly in full collections that scan every
object alive, and the scheduler's heap (its view of the jobs) only grows. Almost everything a
message creates is freed by reference counting the moment it is done with; the collector only
matters for cycles. So a service collects its youngest generation every ``young`` net
allocations instead of every 700, and what exists once start-up is done (modules, settings,
clients) is frozen out of every later scan.
"""

from __future__ import annotations

import gc


def tune_gc(young: int) -> None:
    """Freeze what start-up made and collect the young generation every ``young`` allocations
    (0 leaves Python's defaults)."""
    if young <= 0:
        return
    gc.collect()
    gc.freeze()  # frozen objects are still freed by reference counting; only scans skip them
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)
