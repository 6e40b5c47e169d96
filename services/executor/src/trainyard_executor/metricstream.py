"""Reports a job writes on its stderr behind a marker, taken out of its log before anyone sees them.

Where the attempt's work dir is not on this host (Kubernetes: it is in the pod) there is no metrics
file to read, but the executor already streams the pod's log. The reporter then writes each report
as one line, ``\\x1etrainyard.metric {"step": ..., "values": ...}``, with one unbuffered write to
fd 2 (``reporter/trainyard.py``, ``TRAINYARD_METRICS_STREAM=stderr``).

- :class:`MarkedLines` sits between one pod's log and its line splitter: the bytes of a marked line
  (from the marker to the end of its line) go to the attempt's :class:`ReportBuffer`, never to the
  job's log; every other byte passes through unchanged. The marker is found anywhere in a line: a
  job that left a line open on stderr (a progress bar drawn with ``\\r``) has it mid-line; what came
  before it stays in the log. A forged or garbled marked line is the job's own business: it is
  diverted like any other and dropped and counted by the parser, never logged as output.
- Bounded as the file is: a marked line is held up to ``max_line_bytes`` (a longer one is skipped
  whole, to its end, and counted); the buffer holds at most ``read_bytes`` until the shipper's next
  look (more is dropped and counted: the rate limit); an attempt diverts ``max_bytes`` in all.
- :class:`ReportBuffer` answers the metrics shipper as :class:`~.metricsfile.MetricsFile` does
  (``read``, ``refused``, ``exhausted``, ``dropped``), so the same parser and limits apply.
"""

from __future__ import annotations

import threading

from trainyard_executor.metricsfile import Dropped, MetricsLimits

MARK = b"\x1etrainyard.metric "
"""What starts a report on a job's stderr (the reporter's ``MARK``: the two must agree)."""


def _held(data: bytes, start: int) -> int:
    """How many bytes at the end of ``data[start:]`` may be the start of a marker cut by the chunk's
    end (kept back until the next chunk says)."""
    most = min(len(MARK) - 1, len(data) - start)
    if MARK[0] not in data[len(data) - most :]:
        return 0  # the usual case: no record separator near the end
    for size in range(most, 0, -1):
        if data.endswith(MARK[:size]):
            return size
    return 0


class ReportBuffer:
    """An attempt's diverted reports (one JSON line each), waiting for the metrics shipper.

    Fed on the event loop (the log followers), read in the shipper's worker thread: locked."""

    def __init__(self, limits: MetricsLimits | None = None) -> None:
        self.limits = limits or MetricsLimits()  # the shipper puts the executor's settings here
        self.dropped = Dropped()
        self.refused: str | None = None  # never: nothing here is the job's to plant
        self.exhausted = False  # max_bytes taken; the rest is ignored
        self.total = 0
        self._lines = bytearray()
        self._lock = threading.Lock()

    def put(self, line: bytes) -> None:
        """One report (without its newline), kept if the bounds allow, else counted."""
        with self._lock:
            if self.exhausted:
                return
            size = len(line) + 1
            if self.total + size > self.limits.max_bytes:
                self.exhausted = True
                return
            if len(self._lines) + size > self.limits.read_bytes:
                self.dropped.add(f"more than {self.limits.read_bytes} bytes of reports between two looks")
                return
            self._lines += line
            self._lines += b"\n"
            self.total += size

    def drop(self, reason: str) -> None:
        with self._lock:
            self.dropped.add(reason)

    def read(self) -> tuple[bytes, bool]:
        """What was diverted since the last read (never "restarted": a stream is not replaced)."""
        with self._lock:
            data = bytes(self._lines)
            self._lines.clear()
        return data, False


class MarkedLines:
    """One pod's log in, its plain bytes out; its marked lines to ``reports`` (only when ``keep``:
    in a gang only rank 0 reports, another rank's marked lines are dropped and counted)."""

    def __init__(self, reports: ReportBuffer, keep: bool = True, who: str = "") -> None:
        self.reports = reports
        self.keep = keep
        self.who = who  # "rank 2": named in the drop's reason
        self._line: bytearray | None = None  # inside a marked line: its bytes so far
        self._over = False  # that line passed max_line_bytes: skipped to its end
        self._tail = b""  # the last chunk's end, which may be the start of a marker

    def feed(self, chunk: bytes) -> bytes:
        """The bytes of ``chunk`` that are the job's output (a cut marker waits for the next)."""
        data = self._tail + chunk if self._tail else chunk
        self._tail = b""
        plain = bytearray()
        start, size = 0, len(data)
        while start < size:
            if self._line is not None:
                newline = data.find(b"\n", start)
                self._take(data[start : size if newline < 0 else newline])
                if newline < 0:
                    break
                self._finish()
                start = newline + 1
                continue
            at = data.find(MARK, start)
            if at < 0:
                held = _held(data, start)
                plain += data[start : size - held]
                self._tail = data[size - held :]
                break
            plain += data[start:at]
            self._line = bytearray()
            start = at + len(MARK)
        return bytes(plain)

    def end(self) -> bytes:
        """The log ended: what was held back is output; a marked line without its end is dropped."""
        if self._line is not None:
            self.reports.drop("a report cut off at the end of the log")
            self._line, self._over = None, False
        tail, self._tail = self._tail, b""
        return tail

    def _take(self, piece: bytes) -> None:
        if self._over or self._line is None:
            return
        most = self.reports.limits.max_line_bytes
        if len(self._line) + len(piece) > most:
            self._over = True
            self._line.clear()
            self.reports.drop(f"a line over {most} bytes")
            return
        self._line += piece

    def _finish(self) -> None:
        line, over = self._line, self._over
        self._line, self._over = None, False
        if line is None or over:
            return
        if not self.keep:
            self.reports.drop(f"a report from {self.who or 'another rank'} (only rank 0 reports)")
            return
        self.reports.put(bytes(line).rstrip(b"\r"))
