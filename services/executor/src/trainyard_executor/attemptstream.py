"""Where one attempt's output of one kind is stored: its own subject on its stream."""

from __future__ import annotations

from typing import Literal

from faststream.nats import NatsBroker

from trainyard_contracts import Subjects
from trainyard_shared.publishing import MSG_ID, publish_acked

StreamKind = Literal["logs", "metrics"]


class AttemptStream:
    """What the log and metrics shippers write to: the attempt, its subject and stream, and an acked
    publish under a stable message id (a retry after a lost ack is dropped by the stream)."""

    def __init__(self, broker: NatsBroker, subject: str, stream: str, job_id: str, attempt: int) -> None:
        self.broker = broker
        self.subject = subject
        self.stream = stream
        self.job_id = job_id
        self.attempt = attempt

    async def publish(self, payload: bytes, msg_id: str) -> None:
        await publish_acked(self.broker, self.subject, payload, {MSG_ID: msg_id}, self.stream)

    @classmethod
    def of(
        cls, broker: NatsBroker, subjects: Subjects, kind: StreamKind, job_id: str, attempt: int
    ) -> AttemptStream:
        """The attempt's own subject on the logs or the metrics stream."""
        if kind == "logs":
            return cls(broker, subjects.log(job_id, attempt), subjects.streams.logs, job_id, attempt)
        return cls(broker, subjects.metrics(job_id, attempt), subjects.streams.metrics, job_id, attempt)
