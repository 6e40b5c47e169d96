"""Identifiers: job ids that sort by time and are safe in NATS subjects and KV keys."""

from __future__ import annotations

import hashlib
import os
import re
import time

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
JOB_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{5,63}$"
_JOB_ID = re.compile(JOB_ID_PATTERN)


def _base36(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rest = divmod(number, 36)
        digits.append(_ALPHABET[rest])
    return "".join(reversed(digits))


def new_job_id(now: float | None = None) -> str:
    """16 characters: 9 of milliseconds (sortable until the year 5188), 7 random."""
    millis = int((time.time() if now is None else now) * 1000)
    return _base36(millis, 9) + _base36(int.from_bytes(os.urandom(5), "big"), 7)


def is_job_id(value: str) -> bool:
    return bool(_JOB_ID.match(value))


WORKFLOW_INTAKE = "intake.workflow"  # the namespace of keys published on Subjects.intake_workflow


def intake_namespace(workflow_channel: bool, token_id: str | None) -> str:
    """Whose keys a bus submission's ``Nats-Msg-Id`` is among: the workflow service's (its own
    subject), a token's (the sender named one), or anonymous senders' (``intake``). One sender's key
    never answers with another's job."""
    if workflow_channel:
        return WORKFLOW_INTAKE
    return "intake" if token_id is None else f"intake.{token_id}"


def idempotency_slot(namespace: str, key: str) -> str:
    """The idempotency bucket's key for a submitter's ``key`` (``intake`` for the bus intake's
    ``Nats-Msg-Id``), kept on the job record: it says which key a job was submitted under."""
    return f"{namespace}.{hashlib.sha256(key.encode()).hexdigest()[:40]}"
