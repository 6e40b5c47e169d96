"""The metrics a job appends to ``TRAINYARD_METRICS_FILE``: read without trusting the file, and
parsed into points under the attempt's limits.

The file is in the job's work dir: the job may put anything there, a link to a host file, a FIFO,
a sparse file of terabytes, one line without an end, a million names. So:

- the file is opened below the work dir's descriptor with ``O_NOFOLLOW | O_NONBLOCK`` and read only
  when it is a regular file (a link, a FIFO, a directory are refused, once, with a reason);
- each read takes at most ``read_bytes`` from where the last one stopped (``pread``), an attempt at
  most ``max_bytes`` in all; a file that was replaced (another inode) or cut shorter is read again
  from its start;
- a line longer than ``max_line_bytes`` is skipped whole (up to its end), never held;
- a point is kept only with a valid step, finite values under valid names
  (:func:`trainyard_contracts.metric_name_error`), and names among the attempt's first
  ``max_names``; everything else is counted with the first reason, never raised.

:class:`MetricsParser` is pure (bytes in, points out); :class:`MetricsFile` is the only I/O.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from trainyard_contracts import MetricPoint, metric_name_error
from trainyard_contracts.metrics import MAX_STEP

SYSTEM_PREFIX = "sys."
"""Metric names the executor publishes itself (sampling.py); a job's reports under it are dropped."""

METRICS_FILE = ".trainyard-metrics.jsonl"
"""In the attempt's work dir (the job's own: it writes there as its uid)."""


@dataclass(frozen=True)
class MetricsLimits:
    max_names: int = 64
    """Distinct metric names an attempt may report; later new names are dropped."""
    max_line_bytes: int = 16 * 1024
    """A longer line (one report) is skipped."""
    read_bytes: int = 1024 * 1024
    """Read from the file per look (every flush interval): the rate a job's reports are taken at."""
    max_bytes: int = 64 * 1024 * 1024
    """Read from one attempt's file in all; past it the rest is ignored (one note in its log)."""


@dataclass
class Dropped:
    """What was left out, with the first reason (for the note in the job's log)."""

    count: int = 0
    first: str | None = None

    def add(self, reason: str, count: int = 1) -> None:
        self.count += count
        if self.first is None:
            self.first = reason


@dataclass
class MetricsParser:
    """Lines of the metrics file to points, under the attempt's limits (pure)."""

    limits: MetricsLimits = field(default_factory=MetricsLimits)
    names: set[str] = field(default_factory=set)
    dropped: Dropped = field(default_factory=Dropped)
    _partial: bytearray = field(default_factory=bytearray)
    _skipping: bool = False  # inside a line over max_line_bytes: skip to its end

    def feed(self, data: bytes) -> list[MetricPoint]:
        """Points from the complete lines of ``data`` (a part line waits for the rest)."""
        points: list[MetricPoint] = []
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            if self._skipping:
                if end >= 0:
                    self._skipping = False
            elif len(self._partial) + len(piece) > self.limits.max_line_bytes:
                self._partial.clear()
                self.dropped.add(f"a line over {self.limits.max_line_bytes} bytes")
                self._skipping = end < 0
            elif end < 0:
                self._partial += piece
            else:
                line = bytes(self._partial + piece) if self._partial else piece
                self._partial.clear()
                point = self.parse(line)
                if point is not None:
                    points.append(point)
            if end < 0:
                break
            start = end + 1
        return points

    def restart(self) -> None:
        """The file was replaced or cut: a part line from before is not continued."""
        self._partial.clear()
        self._skipping = False

    def parse(self, line: bytes) -> MetricPoint | None:
        if not line.strip():
            return None
        try:
            raw: Any = json.loads(line)
        except ValueError:
            self.dropped.add("a line that is not JSON")
            return None
        if not isinstance(raw, dict):
            self.dropped.add("a line that is not a JSON object")
            return None
        step, when, values = raw.get("step"), raw.get("time"), raw.get("values")
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
            self.dropped.add(f"step {str(step)[:40]!r}: not an integer >= 0")
            return None
        if not isinstance(values, dict) or not values:
            self.dropped.add("a line without values")
            return None
        kept: dict[str, float] = {}
        for name, value in values.items():
            reason = self._refused(name, value)
            if reason is not None:
                self.dropped.add(reason)
                continue
            kept[name] = float(value)
        if not kept:
            return None
        if isinstance(when, bool) or not isinstance(when, int | float) or not math.isfinite(when) or when < 0:
            when = 0.0
        return MetricPoint.model_construct(step=step, time=float(when), values=kept)

    def _refused(self, name: str, value: Any) -> str | None:
        known = name in self.names  # a name already taken was checked when it came first
        if not known:
            error = metric_name_error(name)
            if error is not None:
                return error
            if name.startswith(SYSTEM_PREFIX):
                return f"metric {name!r}: names under {SYSTEM_PREFIX!r} are the executor's (resource use)"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"metric {name!r}: not a number"
        if not math.isfinite(value):
            return f"metric {name!r}: {value} is not a finite number"
        if not known:
            if len(self.names) >= self.limits.max_names:
                return f"metric {name!r}: over the attempt's {self.limits.max_names} names"
            self.names.add(name)
        return None


class ReportSource(Protocol):
    """Where a shipper reads an attempt's reports: its metrics file, or what was diverted from its
    log (:class:`~trainyard_executor.metricstream.ReportBuffer`)."""

    limits: MetricsLimits
    dropped: Dropped  # what the source itself left out (the parser counts the rest)
    refused: str | None
    exhausted: bool

    def read(self) -> tuple[bytes, bool]: ...


class MetricsFile:
    """Reads what a job appended to its metrics file since the last look, link-safe and bounded."""

    def __init__(self, workdir: Path, limits: MetricsLimits, name: str = METRICS_FILE) -> None:
        self.workdir = workdir
        self.name = name
        self.limits = limits
        self.offset = 0
        self.total = 0  # bytes read from the file(s) in all
        self.refused: str | None = None  # why the file is not read (a link, not a regular file)
        self.exhausted = False  # max_bytes read
        self.dropped = Dropped()  # nothing: a file's lines are all the parser's to judge
        self._inode: tuple[int, int] | None = None

    def read(self) -> tuple[bytes, bool]:
        """The bytes appended since the last read (at most ``read_bytes``), and whether the file
        was replaced or cut since (the reader starts over from its beginning)."""
        if self.exhausted:
            return b"", False
        try:
            dir_fd = os.open(self.workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return b"", False  # not made yet (the attempt is preparing) or gone
        try:
            fd = os.open(self.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK):
                self.refused = f"{self.name} is a symbolic link: not followed"
            return b"", False
        finally:
            os.close(dir_fd)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                self.refused = f"{self.name} is not a regular file"
                return b"", False
            self.refused = None
            restarted = False
            inode = (info.st_dev, info.st_ino)
            if inode != self._inode or info.st_size < self.offset:
                restarted = self._inode is not None
                self._inode = inode
                self.offset = 0
            want = min(info.st_size - self.offset, self.limits.read_bytes, self.limits.max_bytes - self.total)
            if want <= 0:
                self.exhausted = self.total >= self.limits.max_bytes
                return b"", restarted
            data = os.pread(fd, want, self.offset)
            self.offset += len(data)
            self.total += len(data)
            return data, restarted
        finally:
            os.close(fd)
