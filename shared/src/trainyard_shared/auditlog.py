"""The audit stream: appending an entry (a service, as itself) and reading entries back (the API).

A service appends on ``<prefix>.audit.<service>.<action>`` only (its NATS user may publish there and
nowhere else in the stream); the stream denies deletes and purges (bus.py), so what was appended
stays until the stream's age or size limit ends it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from datetime import datetime

from faststream.nats import NatsBroker
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from trainyard_contracts import Subjects
from trainyard_contracts.audit import MAX_AUDIT_ENTRY_BYTES, AuditEntry
from trainyard_shared.publishing import MSG_ID, publish_acked

FETCH_BATCH = 256


class AuditLog:
    """Appends ``service``'s entries; ``msg_id`` makes a repeat of one change one entry."""

    def __init__(self, broker: NatsBroker, subjects: Subjects, service: str) -> None:
        self.broker, self.subjects, self.service = broker, subjects, service

    async def append(self, entry: AuditEntry, msg_id: str | None = None) -> None:
        payload = entry.model_dump_json(exclude_none=True).encode()
        if len(payload) > MAX_AUDIT_ENTRY_BYTES:  # a summary grew too long: keep who and what
            trimmed = entry.model_copy(update={"before": None, "after": None, "detail": "(trimmed)"})
            payload = trimmed.model_dump_json(exclude_none=True).encode()
        await publish_acked(
            self.broker,
            self.subjects.audit(self.service, entry.action.replace(".", "_")),
            payload,
            {MSG_ID: msg_id or entry.entry_id, "content-type": "application/json"},
            self.subjects.streams.audit,
        )


async def read_audit(
    js: JetStreamContext,
    subjects: Subjects,
    keep: Callable[[AuditEntry], bool],
    since: datetime | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """The newest ``limit`` entries kept by ``keep``, oldest first, from ``since`` (else all)."""
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME if since else DeliverPolicy.ALL,
        opt_start_time=since,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=30.0,
    )
    sub = await js.pull_subscribe(subjects.audit_of(), stream=subjects.streams.audit, config=config)
    found: collections.deque[AuditEntry] = collections.deque(maxlen=limit)
    try:
        pending = (await sub.consumer_info()).num_pending or 0
        while pending > 0:
            try:
                msgs = await sub.fetch(min(pending, FETCH_BATCH), timeout=2)
            except NatsTimeout:
                break
            for msg in msgs:
                try:
                    entry = AuditEntry.model_validate_json(msg.data)
                except ValidationError:
                    continue  # not an entry (a hand-published message): nothing to show
                if keep(entry):
                    found.append(entry)
            pending -= len(msgs)
    finally:
        await sub.unsubscribe()
    return list(found)
