"""An attempt's reported metrics to the metrics stream: ``<prefix>.metrics.<job>.<attempt>``.

While the attempt runs, its metrics file (:mod:`.metricsfile`) is looked at every
``flush_seconds``; what the job appended since is parsed and published as a few batches
(:class:`~trainyard_contracts.MetricsBatch`), so 1,000 reports are a handful of messages, not
1,000. Bounded at every step: at most ``max_points`` points per look (more are thinned: evenly
spaced ones kept, always the last), each batch under ``max_msg_bytes`` and the server's
``max_payload``, and at most ``max_pending`` batches held while NATS does not take them (oldest
dropped first). Nothing here raises into the attempt: a failure is logged once and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from trainyard_contracts import MetricPoint
from trainyard_executor.attemptstream import AttemptStream
from trainyard_executor.metricsfile import MetricsFile, MetricsLimits, MetricsParser, ReportSource
from trainyard_executor.sampling import ResourceSampler
from trainyard_shared.natshandle import NatsHandle

log = logging.getLogger("trainyard.executor.metrics")

HEADROOM = 1024  # headers (the message id) count against the stream's max_msg_size and max_payload
STOP_WAIT = 30.0  # seconds the look in progress may take to finish at the attempt's end
FINAL_LOOKS = 64  # at the end, reads of what is left in the file (each up to read_bytes)

Note = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class ShipLimits:
    flush_seconds: float = 1.0
    max_points: int = 2000
    """Points published per look; more are thinned (the rate limit)."""
    max_msg_bytes: int = 64 * 1024
    max_pending: int = 64
    """Batches held while the stream does not take them."""


def thin(points: list[MetricPoint], most: int) -> list[MetricPoint]:
    """At most ``most`` of ``points``, evenly spaced, the last always among them."""
    if len(points) <= most:
        return points
    if most <= 1:
        return points[-1:]
    last = len(points) - 1
    return [points[round(i * last / (most - 1))] for i in range(most)]


def point_json(point: MetricPoint) -> str:
    return json.dumps(
        {"step": point.step, "time": point.time, "values": point.values},
        separators=(",", ":"),
        allow_nan=False,
    )


def batches(
    job_id: str, attempt: int, seq: int, points: list[str], dropped: int, most: int
) -> list[tuple[bytes, int]]:
    """``points`` (JSON each) in ``MetricsBatch`` payloads of at most ``most`` bytes, numbered
    from ``seq``, each with its number of points. A point is far smaller than a batch (names and
    line length are bounded)."""
    head = json.dumps({"job_id": job_id, "attempt": attempt})[:-1]
    out: list[tuple[bytes, int]] = []
    current: list[str] = []
    size = 0

    def close() -> None:
        body = f'{head},"seq":{seq + len(out)},"points":[{",".join(current)}],"dropped":{dropped}}}'
        out.append((body.encode(), len(current)))

    for point in points:
        envelope = len(head) + len(f',"seq":{seq + len(out)},"points":[],"dropped":{dropped}}}')
        if current and envelope + size + len(point) + 1 > most:
            close()
            current, size = [], 0
        current.append(point)
        size += len(point) + 1
    if current:
        close()
    return out


class MetricsShipper:
    def __init__(
        self,
        to: AttemptStream,
        workdir: Path | ReportSource,
        note: Note,
        limits: MetricsLimits | None = None,
        ship: ShipLimits | None = None,
        sampler: ResourceSampler | None = None,
    ) -> None:
        self.to = to  # the attempt, and its subject on the metrics stream
        self.note = note
        self.ship = ship or ShipLimits()
        self.limits = limits or MetricsLimits()
        # the attempt's work dir on this host (its metrics file), or what its backend diverts from
        # its log (Kubernetes: metricstream.py); the same parser and limits either way
        self.file: ReportSource
        if isinstance(workdir, Path):
            self.file = MetricsFile(workdir, self.limits)
        else:
            self.file = workdir
            self.file.limits = self.limits
        self.parser = MetricsParser(self.limits)
        self.sampler = sampler  # the attempt's resource use, a point every few seconds while it runs
        self.seq = 0
        self.published = 0  # batches stored
        self.points = 0  # points stored
        self._thinned = 0
        self._run = secrets.token_hex(4)  # message ids of this executor's run (a restart reads again)
        self._pending: deque[tuple[str, bytes, int]] = deque()  # (msg id, payload, points)
        self._lost = 0  # batches dropped while the stream did not take them
        self._warned = False
        self._noted_drop = False
        self._noted_refusal: str | None = None
        self._noted_exhausted = False
        self._task: asyncio.Task[None] | None = None
        self._reading = threading.Lock()
        self._stopping = asyncio.Event()

    @property
    def dropped(self) -> int:
        return self.parser.dropped.count + self.file.dropped.count + self._thinned

    @property
    def first_drop(self) -> str | None:
        return self.file.dropped.first or self.parser.dropped.first

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"metrics-{self.to.job_id}-{self.to.attempt}")

    async def stop(self) -> None:
        """The attempt ended: what is left in the file is published (bounded), then a note of
        what was dropped. Idempotent; never raises."""
        task, self._task = self._task, None
        if task is None:
            return
        # the loop ends after the look it is in (cancelling it mid-look would lose what that
        # look had read); a look is bounded (read_bytes, and a publish times out)
        self._stopping.set()
        await asyncio.wait({task}, timeout=STOP_WAIT)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            for _ in range(FINAL_LOOKS):
                if not await self.look():
                    break
            await self._send()
            if self.dropped:
                first = self.first_drop or "thinned out over the rate limit"
                await self.note(
                    f"[trainyard: metrics: {self.dropped} reported values or lines dropped (first: {first})]"
                )
        except Exception:
            log.exception("metrics of an attempt could not be finished", extra={"job_id": self.to.job_id})

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.ship.flush_seconds)
            if self._stopping.is_set():
                return
            try:
                await self.look()
                await self._send()
            except asyncio.CancelledError:
                raise
            except Exception:  # never into the attempt; the next look tries again
                log.exception("metrics of an attempt could not be read", extra={"job_id": self.to.job_id})

    async def look(self) -> bool:
        """Read and batch what the job appended since the last look; whether anything was read.
        Reading, parsing and encoding run in a thread: a megabyte of reports is tens of
        milliseconds of CPU, which the executor's event loop (heartbeats, other attempts) must
        not wait for."""
        most = min(self.ship.max_msg_bytes, self._max_payload()) - HEADROOM  # headers count too
        taken = await asyncio.to_thread(self._take, most)
        await self._note_file()
        if self.first_drop is not None and not self._noted_drop:
            self._noted_drop = True
            await self.note(f"[trainyard: metrics: a report was dropped: {self.first_drop}]")
        if taken is None:
            return False
        for payload, count in taken:
            msg_id = f"{self.to.job_id}:{self.to.attempt}:metrics:{self._run}:{self.seq}"
            self._pending.append((msg_id, payload, count))
            self.seq += 1
        while len(self._pending) > self.ship.max_pending:
            self._pending.popleft()
            self._lost += 1
        return True

    def _take(self, most: int) -> list[tuple[bytes, int]] | None:
        """(In a thread.) The new reports, and the resource sample when one is due, as batch
        payloads numbered from ``seq``; None when nothing was read or sampled. Serialised: a look
        cancelled while its thread runs must not overlap the next one (the parser and the file
        offset are one reader's). No sample once the attempt is stopping: its processes are gone."""
        sampled = None
        if self.sampler is not None and not self._stopping.is_set() and self.sampler.due():
            # outside the reading lock: an engine's stats answer may take up to its client's
            # timeout, and the attempt's last looks (which never sample) must not wait for it
            sampled = self.sampler.sample()
        with self._reading:
            data, restarted = self.file.read()
            if restarted:
                self.parser.restart()
            points = self.parser.feed(data) if data else []
            if sampled is not None and self.sampler is not None:
                # a sample rides along with the job's reports; alone only when worth a message
                if points or self.sampler.worth_sending(sampled):
                    self.sampler.sent(sampled)
                else:
                    sampled = None
            if not data and sampled is None:
                return None
            kept = thin(points, self.ship.max_points)
            self._thinned += len(points) - len(kept)
            if sampled is not None:
                kept.append(sampled)
            if not kept:
                return []
            encoded = [point_json(p) for p in kept]
            return batches(self.to.job_id, self.to.attempt, self.seq, encoded, self.dropped, most)

    async def _note_file(self) -> None:
        refused = self.file.refused
        if refused is not None and refused != self._noted_refusal:
            self._noted_refusal = refused
            await self.note(f"[trainyard: metrics: {refused}; reports are not read]")
        if self.file.exhausted and not self._noted_exhausted:
            self._noted_exhausted = True
            await self.note(
                f"[trainyard: metrics: {self.limits.max_bytes} bytes of reports read; the rest is ignored]"
            )

    async def _send(self) -> None:
        while self._pending:
            msg_id, payload, count = self._pending[0]
            try:
                await self.to.publish(payload, msg_id)
            except Exception as exc:
                if not self._warned:  # once per attempt: a stream away must not flood the log
                    self._warned = True
                    log.warning(
                        "metrics of this attempt are not being stored; holding a few batches",
                        extra={"job_id": self.to.job_id, "error": f"{type(exc).__name__}: {exc}"},
                    )
                return
            self._pending.popleft()
            self.published += 1
            self.points += count

    def _max_payload(self) -> int:
        try:
            return NatsHandle(self.to.broker).max_payload
        except Exception:
            return 1024 * 1024
