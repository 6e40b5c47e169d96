"""Live training metrics from inside a Trainyard job: ``trainyard.report(step, loss=0.25, acc=0.9)``.

The executor puts this file on every job's ``PYTHONPATH`` (a copy in the attempt's work dir), so
``import trainyard`` works in any interpreter and any image without installing anything. It uses
the standard library only and talks to no service: each call appends one JSON line to the file
named by ``TRAINYARD_METRICS_FILE`` (in the attempt's work dir); the executor reads that file and
publishes the points in batches. The job never holds bus credentials.

- Outside a job (no ``TRAINYARD_METRICS_FILE``) ``report`` does nothing, so a script runs the same
  on a laptop.
- In a distributed job only rank 0 reports (``TRAINYARD_RANK``); the other ranks' calls do nothing.
- A call costs one ``json.dumps`` and one ``write`` (about 10 microseconds); the executor decides
  what is kept: names must match ``^[A-Za-z_][A-Za-z0-9_.:/-]{0,63}$``, values must be finite
  numbers, and an attempt keeps at most a bounded number of names (what breaks a rule is dropped
  and counted in the job's log).
"""

from __future__ import annotations

import json
import os
import threading
import time

__all__ = ["report"]

_lock = threading.Lock()
_fd: int | None = None
_opened: str | None = None


def report(step: int, **metrics: float) -> None:
    """Record ``metrics`` (name=value, numbers) at training step ``step`` (an int >= 0)."""
    path = os.environ.get("TRAINYARD_METRICS_FILE")
    if not path or os.environ.get("TRAINYARD_RANK", "0") != "0" or not metrics:
        return
    values = {name: float(value) for name, value in metrics.items()}  # TypeError: not a number
    line = json.dumps({"step": int(step), "time": round(time.time(), 3), "values": values})
    data = (line + "\n").encode()
    global _fd, _opened
    with _lock:
        if _fd is None or _opened != path:
            # O_APPEND: one write per line lands whole at the end, whoever else appends
            _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            _opened = path
        os.write(_fd, data)
