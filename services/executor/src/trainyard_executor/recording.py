"""Reporting how an attempt ended (the scheduler writes it into the record), riding out a broker
outage. The executor writes no job record: docs/security.md, "Executors report; the scheduler
writes the record"."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from nats.errors import Error as NatsError

from trainyard_contracts import JobRecord
from trainyard_contracts.records import AttemptRuntime, AttemptUsage
from trainyard_contracts.reports import ExecutorReport, ReportKind, clip
from trainyard_contracts.stepoutputs import OutputValue
from trainyard_executor.logship import LogShipper
from trainyard_executor.reporting import Reporter
from trainyard_executor.settings import ExecutorSettings
from trainyard_shared.jobstore import JobStore

log = logging.getLogger("trainyard.executor")
T = TypeVar("T")
# what NATS raises while the server restarts or the network blips (nats.errors.Error covers the
# client's own timeouts, no-responders and closed-connection errors)
BROKER_ERRORS = (TimeoutError, NatsError, ConnectionError)


def ended_for_good(attempt: int) -> Callable[[JobRecord | None], bool | None]:
    """Has the job ended (True), or gone on to another attempt (False)? None: not decided yet."""

    def decide(record: JobRecord | None) -> bool | None:
        if record is None:
            return True  # purged: it ended
        if record.attempt != attempt:
            return False
        return True if record.state.terminal else None

    return decide


class AttemptRecorder:
    """Reports an attempt's changes (the scheduler applies them to the record by compare-and-set,
    fenced on this executor and the attempt, and announces them). The base of
    :class:`~trainyard_executor.core.ExecutorCore`."""

    me: str
    store: JobStore  # reads only: the records, and the remembered copies the start commands carry
    reports: Reporter
    settings: ExecutorSettings
    clock: Callable[[], datetime]

    def _report(self, kind: ReportKind, job_id: str, attempt: int, **fields: Any) -> ExecutorReport:
        if "reason" in fields:
            fields["reason"] = clip(fields["reason"])
        return ExecutorReport(
            kind=kind, job_id=job_id, attempt=attempt, executor_id=self.me, time=self.clock(), **fields
        )

    async def _send(self, report: ExecutorReport) -> None:
        """Publish ``report``, tried again while the broker is away (the stream drops a re-send)."""
        await self._while_the_broker_is_away(lambda: self.reports.send(report), report.job_id)

    async def _finish(
        self,
        job_id: str,
        attempt: int,
        kind: str,
        exit_code: int | None,
        reason: str,
        outputs_uri: str | None,
        duration: float,
        lines_stored: Awaitable[object] | None = None,
        outputs: dict[str, OutputValue] | None = None,
        usage: AttemptUsage | None = None,
        runtime: AttemptRuntime | None = None,
        outputs_digest: str | None = None,
    ) -> None:
        """Report how the attempt ended; ``lines_stored``: the attempt's last log lines on their
        way, stored before the report (a reader of the end event the scheduler announces finds
        every line)."""
        report = self._report(
            "end",
            job_id,
            attempt,
            outcome=kind,
            exit_code=exit_code,
            reason=reason,
            outputs_uri=outputs_uri,
            outputs=outputs,
            outputs_digest=outputs_digest,
            duration_seconds=max(0.0, duration),
            usage=usage,
            runtime=runtime,
        )
        if lines_stored is not None:
            await lines_stored
        await self._send(report)

    async def _ended_for_good(self, job_id: str, attempt: int) -> bool:
        """Whether the job ended with this attempt (its checkpoints can go), once the record says;
        False when that is not known in time (the checkpoints stay)."""
        try:
            return await self.reports.settle(
                job_id, ended_for_good(attempt), self.settings.report_settle_seconds
            )
        except BROKER_ERRORS:
            log.warning(
                "the end of an attempt was not applied in time; its checkpoints are kept",
                extra={"job_id": job_id, "attempt": attempt},
            )
            return False

    async def _let_go(self, job_id: str, attempt: int) -> None:
        """Say that a stopped attempt's process has ended here (the scheduler clears its
        ``stopping`` mark): the scheduler holds its room until then (scheduler/room.py)."""
        try:
            await self._send(self._report("stopped", job_id, attempt))
        except BROKER_ERRORS:
            log.warning(
                "could not report that a stopped attempt ended; the scheduler frees its room later",
                extra={"job_id": job_id, "attempt": attempt},
            )

    async def _ship_outcome_lines(self, shipper: LogShipper, line: str, job_id: str) -> None:
        try:
            await self._while_the_broker_is_away(lambda: shipper.system(line), job_id)
            await self._while_the_broker_is_away(shipper.close, job_id)
        except BROKER_ERRORS:
            log.warning("the attempt's last log lines could not be stored", extra={"job_id": job_id})

    async def _while_the_broker_is_away(self, call: Callable[[], Awaitable[T]], job_id: str) -> T:
        """``call()``, tried again while NATS does not answer (a restart, a network blip), for up
        to ``broker_outage_seconds``: a broker outage delays reporting an outcome, never changes it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.broker_outage_seconds
        pause = 0.2
        while True:
            try:
                return await call()
            except BROKER_ERRORS as exc:
                if loop.time() + pause > deadline:
                    raise
                log.warning(
                    "NATS did not answer; trying again", extra={"job_id": job_id, "error": type(exc).__name__}
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _requeue(self, record: JobRecord, detail: str) -> None:
        """Hand the attempt back (not a retry): the scheduler requeues it, or, if it is no longer
        this executor's, frees its room; a member of a split gang gives its ranks up and the
        others stop theirs."""
        await self._send(self._report("handback", record.job_id, record.attempt, reason=detail))
