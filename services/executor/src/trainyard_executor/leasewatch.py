"""Whether this executor's lease has been held without a break: what a stalled start needs to know.

The scheduler gives an executor's attempts away only once its lease has expired (``lease_seconds``
after the last renewal it saw, plus the scheduler's own wait). A start that took longer than a
heartbeat used to read the job's record before it spawned, in case that had happened meanwhile; in
a drain nearly every start queues that long behind the others, and the read was 12 % of the
executor's event loop (docs/performance.md). If every renewal since the start landed within a lease
of the one before, the lease never lapsed, nothing was given away for a lost executor, and the read
is not needed.
"""

from __future__ import annotations

import math
import time


class LeaseWatch:
    """Renewals as this process saw them, on the monotonic clock. Conservative: a renewal counts
    from when it was *asked* (its write may land later), and a gap counts from the previous
    renewal's ask to this one's answer."""

    def __init__(self, lease_seconds: float) -> None:
        self.lease_seconds = lease_seconds
        self.held_since = math.inf  # since when the lease has been held without a break
        self.last_asked: float | None = None  # the newest renewal that succeeded, when it was asked

    def renewed(self, asked: float, answered: float) -> None:
        """A renewal asked at ``asked`` succeeded at ``answered``."""
        previous = self.last_asked
        if previous is None or answered - previous >= self.lease_seconds:
            self.held_since = asked  # the first, or after a gap the lease may have lapsed in
        self.last_asked = asked

    def held_throughout(self, since: float, now: float | None = None) -> bool:
        """Whether the lease was held without a break from ``since`` until ``now``."""
        now = time.monotonic() if now is None else now
        last = self.last_asked
        return last is not None and self.held_since <= since and now - last < self.lease_seconds
