"""Reading a job's output (logs stream) and reported metrics (metrics stream) back, once or
following them to the end."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from trainyard_contracts import JobRecord, LogChunk, MetricsBatch, Subjects
from trainyard_submission.service import JobNotFound, SubmissionService


async def read_messages(
    js: JetStreamContext,
    stream: str,
    subject: str,
    follow: bool,
    finished: Callable[[], Awaitable[bool]],
    policy: DeliverPolicy = DeliverPolicy.ALL,
) -> AsyncGenerator[bytes, None]:
    """The bodies stored on ``subject`` in order (from the newest one with ``DeliverPolicy.LAST``),
    with a consumer the server names (removed after); with ``follow``, until ``finished()`` and
    nothing more is pending."""
    sub = await js.pull_subscribe(
        subject,
        stream=stream,
        config=ConsumerConfig(deliver_policy=policy, ack_policy=AckPolicy.NONE, inactive_threshold=60.0),
    )
    try:
        while True:
            info = await sub.consumer_info()
            pending = info.num_pending or 0
            if pending == 0:
                if not follow:
                    return
                if await finished():
                    # one last look: the final message may have landed with the end event
                    if (await sub.consumer_info()).num_pending == 0:
                        return
            try:
                msgs = await sub.fetch(min(max(pending, 1), 256), timeout=0.5 if follow else 2.0)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                yield msg.data
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


class JobOutput:
    """One job's output for a reader (the API's logs and metrics routes, the UI's log pane): its
    chunks (or metric batches), once or followed to the end, and the record as last read, so that
    the end names the job's state.

    The record is read from the bucket only when the log stream has gone quiet (``chunks``
    asks at most once per fetch wait)."""

    def __init__(
        self, service: SubmissionService, js: JetStreamContext, subjects: Subjects, record: JobRecord
    ):
        self.service, self.js, self.subjects = service, js, subjects
        self.job_id = record.job_id
        self.latest: JobRecord | None = record  # None: removed while followed

    async def finished(self) -> bool:
        try:
            now = await self.service.get(self.job_id)
        except JobNotFound:
            self.latest = None
            return True  # removed while followed: nothing more will be written for it
        self.latest = now
        return bool(now.state.terminal)

    async def chunks(self, attempt: int | None, follow: bool) -> AsyncIterator[LogChunk]:
        """Chunks in order. Without ``follow``: what is stored now. With it: until ``finished()`` is
        true and nothing more is stored (the executor flushes its last chunk before the end event).
        ``finished`` is asked only when nothing is pending, at most once per fetch wait."""
        subjects, job_id = self.subjects, self.job_id
        subject = subjects.log(job_id, attempt) if attempt is not None else subjects.logs_of(job_id)
        async for data in read_messages(self.js, subjects.streams.logs, subject, follow, self.finished):
            yield LogChunk.model_validate_json(data)

    async def metric_batches(
        self, attempt: int | None, follow: bool, latest: bool = False
    ) -> AsyncIterator[MetricsBatch]:
        """What the job reported (``trainyard.report``), batch by batch, read as its chunks are (the
        executor publishes the last batch before the end event); ``latest``: only the newest batch
        (what ``trainyard top`` shows), however many are stored."""
        subjects, job_id = self.subjects, self.job_id
        subject = subjects.metrics(job_id, attempt) if attempt is not None else subjects.metrics_of(job_id)
        newest_only = latest and not follow
        policy = DeliverPolicy.LAST if newest_only else DeliverPolicy.ALL
        messages = read_messages(self.js, subjects.streams.metrics, subject, follow, self.finished, policy)
        async with contextlib.aclosing(messages):  # its consumer is removed at once, not at GC
            async for data in messages:
                yield MetricsBatch.model_validate_json(data)
                if newest_only:
                    # the newest batch alone: one that lands while it is read is the next answer's
                    # (CI saw two batches joined into one answer, the second newer than the "newest")
                    return

    def end_state(self) -> str:
        return self.latest.state.value if self.latest else "unknown"
