"""API tokens: one bootstrap admin token, plus team tokens (a team is a queue) kept hashed in KV.

A team token reads ``ty_<id>_<secret>``: ``id`` (12 hex digits) is the key in the ``<prefix>_tokens``
bucket, ``secret`` is 32 random bytes. The bucket holds only sha256(secret): the secret has 256 bits
of entropy, so a slow KDF would add nothing, and the plaintext is shown once, when it is created.
Every check compares digests in constant time. Every replica of the submission service reads the same
bucket on each request, so a revocation holds at once everywhere.

The bootstrap token (``TRAINYARD_SUBMISSION_TOKEN`` or ``<data_dir>/api-token``) is the admin:
``make demo``, ``trainyard up`` and the CLI keep working with it unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainyard_contracts._time import utcnow
from trainyard_contracts.spec import QueueName
from trainyard_submission.joblist import BucketReader, LatestValues

TOKEN_PREFIX = "ty_"
_TOKEN = re.compile(r"^ty_([0-9a-f]{12})_([A-Za-z0-9_-]{20,128})$")
BOOTSTRAP_ID = "bootstrap"


def bucket_name(prefix: str) -> str:
    return f"{prefix.replace('-', '_')}_tokens"


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: the admin (every queue) or one team (its own queue only)."""

    token_id: str
    admin: bool
    team: str | None

    def may_act_on(self, queue: str) -> bool:
        return self.admin or queue == self.team

    @property
    def name(self) -> str:
        """What records and events say submitted or cancelled a job: never the token, only its id.

        ``api`` for the bootstrap token (as before team tokens existed), ``api:<team>:<id>`` or
        ``api:admin:<id>`` otherwise."""
        if self.token_id == BOOTSTRAP_ID:
            return "api"
        return f"api:{self.team or 'admin'}:{self.token_id}"


class TokenRecord(BaseModel):
    """What the bucket keeps about a token: never the token, only its digest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    token_id: str
    team: QueueName | None = None
    admin: bool = False
    secret_sha256: str
    description: str = Field("", max_length=256)
    created_at: datetime = Field(default_factory=utcnow)

    def public(self) -> dict[str, object]:
        return {
            "token_id": self.token_id,
            "team": self.team,
            "admin": self.admin,
            "description": self.description,
            "created_at": self.created_at.isoformat(),
        }


class TokenNotFound(LookupError):
    pass


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def bearer(authorization: str | None) -> str | None:
    if not authorization or not authorization.lower().startswith("bearer "):
        return None
    return authorization[7:].strip() or None


class TokenStore:
    def __init__(self, kv: KeyValue, bootstrap: str, reader: BucketReader) -> None:
        self.kv = kv
        self._bootstrap = bootstrap.encode()
        self.reader = reader

    async def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal of a bearer header, or None for a missing, malformed or unknown token."""
        token = bearer(authorization)
        if token is None:
            return None
        if secrets.compare_digest(token.encode(), self._bootstrap):
            return Principal(BOOTSTRAP_ID, admin=True, team=None)
        match = _TOKEN.match(token)
        if match is None:
            return None
        token_id, secret = match.groups()
        try:
            record = await self._get(token_id)
        except TokenNotFound:
            return None
        if not secrets.compare_digest(_digest(secret).encode(), record.secret_sha256.encode()):
            return None
        return Principal(token_id, admin=record.admin, team=record.team)

    async def create(self, team: str | None, admin: bool, description: str = "") -> tuple[TokenRecord, str]:
        """A new token; returns its record and the plaintext, which is never stored."""
        secret = secrets.token_urlsafe(32)
        for _ in range(5):
            token_id = secrets.token_hex(6)
            record = TokenRecord(
                token_id=token_id,
                team=None if admin else team,
                admin=admin,
                secret_sha256=_digest(secret),
                description=description,
            )
            try:
                await self.kv.create(token_id, record.model_dump_json().encode())
            except KeyWrongLastSequenceError:  # 48-bit id collision: draw again
                continue
            return record, f"{TOKEN_PREFIX}{token_id}_{secret}"
        raise RuntimeError("could not allocate a token id")

    async def list(self) -> list[TokenRecord]:
        # one ordered read (revoked tokens are purged: the reader skips the markers); nats-py's
        # kv.keys() can answer "no keys" when its consumer delivered before it counted
        records = []
        for value, _ in (await self.reader.read(LatestValues())).values.values():
            with contextlib.suppress(ValidationError):  # a hand-written entry: not a token
                records.append(TokenRecord.model_validate_json(value))
        records.sort(key=lambda r: (r.created_at, r.token_id))
        return records

    async def revoke(self, token_id: str) -> TokenRecord:
        record = await self._get(token_id)
        await self.kv.purge(token_id)
        return record

    async def _get(self, token_id: str) -> TokenRecord:
        try:
            entry = await self.kv.get(token_id)
        except KeyNotFoundError as exc:
            raise TokenNotFound(token_id) from exc
        if not entry.value:
            raise TokenNotFound(token_id)
        try:
            return TokenRecord.model_validate_json(entry.value)
        except ValidationError as exc:  # a hand-written entry that is not ours: not a token
            raise TokenNotFound(token_id) from exc
