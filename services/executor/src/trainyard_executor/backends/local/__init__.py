"""Run attempts as local processes: one process group per rank, restart-safe.

Every rank runs under a tiny supervisor (``supervise.py``) that records the exit status in a file,
with its stdout and stderr going to files in the attempt's ``.trainyard/`` dir, tailed to the line
sink. A pid file per attempt (``<root>/attempts/<job>.<attempt>.json``: pids with their start
times, paths, timeout, start time) lets an executor that restarted find its attempts, check that
each pid still names the process it started, and adopt them: their output keeps streaming from
where it had been shipped, and their exit status is reported as if it had never been away.
"""

from ..capacity import detect_capacity
from ..lines import MAX_LINE, LineSplitter, pump_lines
from .attempt import LocalAttempt
from .backend import LocalBackend
from .ranks import META_DIR

__all__ = [
    "MAX_LINE",
    "META_DIR",
    "LineSplitter",
    "LocalAttempt",
    "LocalBackend",
    "detect_capacity",
    "pump_lines",
]
