"""Administration: queues, API tokens, executors and dead letters (writes need an admin token)."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from trainyard_client.connection import TrainyardError
from trainyard_client.sdk.http import HttpClient
from trainyard_contracts import QueueConfig


@dataclass(frozen=True)
class QueueEntry:
    """A queue's configuration and the revision to pass back as ``if_revision`` (0: not stored)."""

    config: QueueConfig
    revision: int

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> QueueEntry:
        fields = {k: v for k, v in row.items() if k != "revision"}
        return cls(QueueConfig.model_validate(fields), int(row.get("revision") or 0))


class TokenInfo(BaseModel):
    """An API token as listed: never the token itself. ``token`` is set only right after creation."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    token_id: str
    team: str | None = None
    admin: bool = False
    description: str = ""
    created_at: datetime
    token: str | None = None


class AdminCalls(HttpClient):
    """The administration calls of :class:`~trainyard_client.sdk.TrainyardClient`."""

    def dead_letters(self, service: str | None = None, limit: int = 100) -> builtins.list[dict[str, Any]]:
        """Messages a service could not handle: seq, service, reason, subject, body."""
        params: dict[str, Any] = {"limit": limit}
        if service:
            params["service"] = service
        letters = self._request("GET", "/v1/dlq", params=params).json().get("letters", [])
        return list(letters)

    def replay_dead_letter(self, seq: int) -> dict[str, Any]:
        """Publish a dead letter again on its original subject, and remove it."""
        return dict(self._request("POST", f"/v1/dlq/{seq}/replay").json()["replayed"])

    # queues and tokens (writes need an admin token)

    def queues(self) -> builtins.list[QueueEntry]:
        """Every queue's configuration; ``default`` is listed with revision 0 until it is written."""
        rows = self._request("GET", "/v1/queues").json().get("queues", [])
        return [QueueEntry.from_json(row) for row in rows]

    def get_queue(self, name: str) -> QueueEntry | None:
        """A queue's stored configuration, or None when it has none (built-in defaults apply)."""
        try:
            return QueueEntry.from_json(self._request("GET", f"/v1/queues/{name}").json())
        except TrainyardError as exc:
            if exc.status == 404:
                return None
            raise

    def set_queue(self, config: QueueConfig, if_revision: int | None = None) -> QueueEntry:
        """Create or replace a queue's configuration; with ``if_revision`` (0: must be new) a
        concurrent change raises TrainyardError 412 instead of being overwritten."""
        headers = {} if if_revision is None else {"If-Match": str(if_revision)}
        body = config.model_dump(mode="json", exclude={"name"})
        return QueueEntry.from_json(
            self._request("PUT", f"/v1/queues/{config.name}", json=body, headers=headers).json()
        )

    def delete_queue(self, name: str, if_revision: int | None = None) -> None:
        headers = {} if if_revision is None else {"If-Match": str(if_revision)}
        self._request("DELETE", f"/v1/queues/{name}", headers=headers)

    def create_token(self, team: str | None = None, admin: bool = False, description: str = "") -> TokenInfo:
        """A new token for one team (its queue) or an admin token; ``.token`` is shown only now."""
        body: dict[str, Any] = {"admin": True} if admin else {"team": team}
        body["description"] = description
        return TokenInfo.model_validate(self._request("POST", "/v1/tokens", json=body).json())

    def tokens(self) -> builtins.list[TokenInfo]:
        rows = self._request("GET", "/v1/tokens").json().get("tokens", [])
        return [TokenInfo.model_validate(row) for row in rows]

    def revoke_token(self, token_id: str) -> None:
        self._request("DELETE", f"/v1/tokens/{token_id}")

    def executors(self) -> builtins.list[dict[str, Any]]:
        """Every executor's latest heartbeat (``running`` as a count, ``alive``) with its
        ``isolation``: what its backend keeps a job from (None: an older executor)."""
        return list(self._request("GET", "/v1/executors").json().get("executors", []))
