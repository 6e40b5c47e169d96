"""The audit stream's entries: who changed what, when, from what to what.

Entries live on ``<prefix>.audit.<service>.<action>`` in the ``<PREFIX>_AUDIT`` stream, which denies
deletes and purges: a service's NATS user may append to its own ``audit.<service>.>`` subjects and
nothing else (docs/models.md, docs/security.md).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from trainyard_contracts._time import utcnow

ACTION_PATTERN = r"^[a-z][a-z0-9_.-]{0,62}$"
MAX_AUDIT_ENTRY_BYTES = 16 * 1024  # an entry's before/after are summaries, never specs or secrets


class AuditEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    entry_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    time: datetime = Field(default_factory=utcnow)
    service: str = Field(max_length=32, description="the service that made the change")
    action: str = Field(pattern=ACTION_PATTERN, description="e.g. model.promote, model.rollback")
    actor: str = Field(max_length=128, description="api, api:<team>:<token id>, or a service")
    token_id: str | None = Field(None, max_length=64)
    team: str | None = Field(None, max_length=63)
    admin: bool = False
    target: str = Field(max_length=300, description="what changed, e.g. model:digits@production")
    model: str | None = Field(None, max_length=128)
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    detail: str = Field("", max_length=1000)
