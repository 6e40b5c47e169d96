"""The dead-letter stream, read and replayed: what a service could not handle, and why.

Replay publishes the original body again on its original subject, with the original's headers
(its reply subject, its trace context) and a new message id, so the stream's dedup window does not
swallow it; the first id travels in ``Trainyard-Original-Msg-Id`` (the intake's idempotency key).
Then it removes the letter. Every consumer of that
subject sees it again; they are idempotent, so only the one that failed does new work.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from trainyard_contracts import Subjects
from trainyard_shared.deadletter import kept_headers


class LetterNotFound(LookupError):
    pass


@dataclass(frozen=True)
class DeadLetter:
    seq: int
    service: str
    reason: str
    subject: str
    deliveries: int
    time: datetime | None
    body: bytes

    def as_json(self) -> dict[str, Any]:
        try:
            text: str | None = self.body.decode()
        except UnicodeDecodeError:
            text = None
        return {
            "seq": self.seq,
            "service": self.service,
            "reason": self.reason,
            "subject": self.subject,
            "deliveries": self.deliveries,
            "time": self.time.isoformat() if self.time else None,
            "body": masked(text)[:4096] if text is not None else None,
            "body_base64": None if text is not None else base64.b64encode(self.body[:4096]).decode(),
        }


def masked(text: str) -> str:
    """A dead letter's body with the secret env values of any spec in it masked."""
    if "secret_env" not in text:
        return text
    try:
        data = json.loads(text)
    except ValueError:
        return "(a body that names secret_env but is not JSON: not shown)"
    return json.dumps(_mask(data))


def _mask(node: Any) -> Any:
    if isinstance(node, list):
        return [_mask(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _mask(value) for key, value in node.items()}
    env, secret = out.get("env"), out.get("secret_env")
    if isinstance(env, dict) and isinstance(secret, list):
        out["env"] = {k: ("***" if k in secret else v) for k, v in env.items()}
    return out


def _letter(seq: int, headers: dict[str, str] | None, body: bytes, when: datetime | None) -> DeadLetter:
    h = headers or {}
    return DeadLetter(
        seq=seq,
        service=h.get("Trainyard-Service", "?"),
        reason=h.get("Trainyard-Reason", ""),
        subject=h.get("Trainyard-Original-Subject", ""),
        deliveries=int(h.get("Trainyard-Deliveries", "0") or 0),
        time=when,
        body=body,
    )


class DeadLetters:
    def __init__(self, js: JetStreamContext, subjects: Subjects) -> None:
        self.js = js
        self.subjects = subjects
        self.stream = subjects.streams.dlq

    async def list(self, service: str | None = None, limit: int = 100) -> list[DeadLetter]:
        subject = self.subjects.dlq(service) if service else f"{self.subjects.prefix}.dlq.>"
        sub = await self.js.pull_subscribe(
            subject,
            stream=self.stream,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=30.0
            ),
        )
        letters: list[DeadLetter] = []
        try:
            pending = (await sub.consumer_info()).num_pending or 0
            while pending > 0 and len(letters) < limit:
                try:
                    msgs = await sub.fetch(min(pending, 256, limit - len(letters)), timeout=2)
                except NatsTimeout:
                    break
                for msg in msgs:
                    meta = msg.metadata
                    letters.append(_letter(meta.sequence.stream, msg.headers, msg.data, meta.timestamp))
                pending -= len(msgs)
        finally:
            await sub.unsubscribe()
        return letters

    async def replay(self, seq: int) -> DeadLetter:
        try:
            raw = await self.js.get_msg(self.stream, seq)
        except NotFoundError as exc:
            raise LetterNotFound(seq) from exc
        letter = _letter(seq, raw.headers, raw.data or b"", None)
        if not letter.subject:
            raise LetterNotFound(seq)
        headers = kept_headers(raw.headers)
        original_id = headers.get("Trainyard-Original-Msg-Id", "")
        headers |= {"Nats-Msg-Id": f"replay:{seq}:{original_id}", "Trainyard-Replayed-From": str(seq)}
        await self.js.publish(letter.subject, letter.body, headers=headers)
        await self.js.delete_msg(self.stream, seq)
        return letter
