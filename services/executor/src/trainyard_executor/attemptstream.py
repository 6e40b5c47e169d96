"""Where one attempt's output of one kind is stored: its own subject on its stream."""

from __future__ import annotations

from faststream.nats import NatsBroker

from trainyard_shared.publishing import MSG_ID, publish_acked


class AttemptStream:
    """What the log and metrics shippers share: the attempt, its subject and stream, and an acked
    publish under a stable message id (a retry after a lost ack is dropped by the stream)."""

    def __init__(self, broker: NatsBroker, subject: str, stream: str, job_id: str, attempt: int) -> None:
        self.broker = broker
        self.subject = subject
        self.stream = stream
        self.job_id = job_id
        self.attempt = attempt

    async def publish(self, payload: bytes, msg_id: str) -> None:
        await publish_acked(self.broker, self.subject, payload, {MSG_ID: msg_id}, self.stream)
