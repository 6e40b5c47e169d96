"""MLflow's own events on the bus: its model-registry webhooks, received, checked and bridged to
``<prefix>.model.<name>.<event>`` (docs/models.md, "MLflow's own events").

A change made in MLflow directly (its UI, its client) is told by MLflow's webhook, an HTTP POST
signed with the webhook's secret: ``X-MLflow-Signature: v1,<base64 HMAC-SHA256>`` over
``<delivery id>.<timestamp>.<body>``, with ``X-MLflow-Delivery-Id`` and ``X-MLflow-Timestamp``. The
receiver refuses what is not signed with the secret (401), is too old or too far ahead (401: a
replay), too large (413) or not a bridged event (422); then:

1. an alias set or deleted in MLflow goes into the alias's record (its history) and the audit
   stream with the identity ``mlflow``, unless the record already says so (the registry's own
   promotion, told back by MLflow, or a repeat of this delivery);
2. a version created outside Trainyard (no ``trainyard.job_id`` tag) is an audit entry;
3. every delivery is published on the bus, its delivery id the message id (MLflow's retries of
   one delivery are one message).

A failure on the way is a 503, which MLflow retries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from trainyard_contracts.audit import AuditEntry
from trainyard_contracts.modelregistry import (
    ALIAS_PATTERN,
    MAX_ALIAS_HISTORY,
    MLFLOW_EVENTS,
    MODEL_NAME_PATTERN,
    AliasRecord,
    MlflowModelEvent,
)
from trainyard_registry.aliases import AliasRefused, promoted
from trainyard_registry.requests import AliasStore
from trainyard_shared.auditlog import AuditLog

log = logging.getLogger("trainyard.registry.webhooks")

PATH = "/mlflow/webhook"
SIGNATURE_HEADER = "x-mlflow-signature"
TIMESTAMP_HEADER = "x-mlflow-timestamp"
DELIVERY_HEADER = "x-mlflow-delivery-id"
SIGNATURE_VERSION = "v1"
MLFLOW = "mlflow"  # the identity of a change made in MLflow directly
JOB_ID_TAG = "trainyard.job_id"  # a version the registry registered carries it (mlflow_store)
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)
_ALIAS = re.compile(ALIAS_PATTERN)
_DELIVERY_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ATTEMPTS = 5  # compare-and-set tries on an alias record moving under us


class WebhookRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message
        super().__init__(message)


# ---------------------------------------------------------------------------------- pure


def signature(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    """MLflow's signature of a delivery (mlflow.webhooks.delivery._generate_hmac_signature)."""
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float, max_age: float) -> str:
    """The delivery id of a delivery signed with ``secret``, sent within ``max_age`` of ``now``."""
    delivery_id = headers.get(DELIVERY_HEADER, "")
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    given = headers.get(SIGNATURE_HEADER, "")
    if not (delivery_id and timestamp and given):
        raise WebhookRefused(401, "not an MLflow webhook delivery: a signature, timestamp or id is missing")
    if not _DELIVERY_ID.match(delivery_id):
        raise WebhookRefused(400, "X-MLflow-Delivery-Id: 1 to 64 letters, digits, '-' or '_'")
    if not timestamp.isdigit() or abs(now - int(timestamp)) > max_age:
        raise WebhookRefused(401, f"X-MLflow-Timestamp is not within {max_age:.0f}s of now")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebhookRefused(400, "the body is not UTF-8") from exc
    version, _, value = given.partition(",")
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    expected = signature(secret, delivery_id, timestamp, text).partition(",")[2]
    if version != SIGNATURE_VERSION or not hmac.compare_digest(decoded, base64.b64decode(expected)):
        raise WebhookRefused(401, "X-MLflow-Signature does not match the webhook's secret")
    return delivery_id


def parse(body: bytes, delivery_id: str) -> MlflowModelEvent:
    """The event a verified delivery tells, as published on the bus."""
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise WebhookRefused(400, "the body is not JSON") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
        raise WebhookRefused(400, "expected an object with entity, action and data")
    data: dict[str, Any] = payload["data"]
    kind = f"{payload.get('entity')}.{payload.get('action')}"
    event = MLFLOW_EVENTS.get(kind)
    if event is None:
        raise WebhookRefused(422, f"{kind!r} is not bridged (only {', '.join(sorted(MLFLOW_EVENTS))})")
    name = data.get("name")
    if not isinstance(name, str) or not _MODEL_NAME.match(name):
        # the subject's token: MLflow allows names that are not one (dots, spaces)
        raise WebhookRefused(422, f"model name {str(name)[:130]!r} is not [A-Za-z0-9_-]{{1,128}}")
    version = str(data.get("version") or "")
    tags = data.get("tags")
    tagged = isinstance(tags, dict) and JOB_ID_TAG in tags
    try:
        return MlflowModelEvent(
            delivery_id=delivery_id,
            event=event,
            name=name,
            version=int(version) if version.isdigit() else None,
            alias=data.get("alias") if isinstance(data.get("alias"), str) else None,
            sent_at=payload.get("timestamp"),
            by_trainyard=event == "model_version_created" and tagged,
            data=data,
        )
    except ValidationError as exc:
        raise WebhookRefused(422, str(exc)[:500]) from exc


def alias_deleted(record: AliasRecord) -> AliasRecord:
    """The record with no holder, the one it had last on its history."""
    assert record.current is not None
    history = [*record.history, record.current][-MAX_ALIAS_HISTORY:]
    return record.model_copy(update={"current": None, "history": history, "applied": True})


# ---------------------------------------------------------------------------------- I/O


class MlflowEvents:
    """A verified delivery into the alias history, the audit stream and onto the bus."""

    def __init__(
        self,
        aliases: AliasStore,
        audit: AuditLog,
        publish: Callable[[MlflowModelEvent], Awaitable[None]],
        clock: Callable[[], datetime],
    ) -> None:
        self.aliases, self.audit, self.publish, self.clock = aliases, audit, publish, clock

    async def handle(self, event: MlflowModelEvent) -> MlflowModelEvent:
        by_trainyard = event.by_trainyard
        alias = event.alias if event.alias and _ALIAS.match(event.alias) else None
        if event.event == "model_version_alias_created" and alias and event.version:
            by_trainyard = await self._alias_set(event, alias, event.version)
        elif event.event == "model_version_alias_deleted" and alias:
            await self._alias_deleted(event, alias)
        elif event.event == "model_version_created" and not by_trainyard and event.version:
            await self._append(event, "model.version_create", f"model:{event.name}", None, event.version)
        told = event.model_copy(update={"by_trainyard": by_trainyard})
        await self.publish(told)
        log.info(
            "MLflow event bridged",
            extra={"model": event.name, "event": event.event, "delivery_id": event.delivery_id},
        )
        return told

    async def _alias_set(self, event: MlflowModelEvent, alias: str, version: int) -> bool:
        """Record MLflow's alias; True when the record says Trainyard set it (nothing to record)."""
        for _ in range(_ATTEMPTS):
            record, revision = await self.aliases.read(event.name, alias)
            changed = promoted(record, event.name, alias, version, MLFLOW, self.clock())
            if changed is None:  # the holder already: Trainyard's promotion, or this delivery again
                assert record is not None and record.current is not None
                return record.current.by != MLFLOW
            changed = changed.model_copy(update={"applied": True})  # MLflow holds it already
            try:
                written = await self.aliases.write(changed, revision)
            except AliasRefused:
                continue  # moved meanwhile: look again
            previous = record.current.version if record and record.current else None
            target = f"model:{event.name}@{alias}"
            await self._append(event, "model.promote", target, previous, version, written)
            return False
        raise WebhookRefused(503, f"{event.name}@{alias} kept changing; try again")

    async def _alias_deleted(self, event: MlflowModelEvent, alias: str) -> None:
        for _ in range(_ATTEMPTS):
            record, revision = await self.aliases.read(event.name, alias)
            if record is None or record.current is None:
                return  # never recorded, or this delivery again
            try:
                written = await self.aliases.write(alias_deleted(record), revision)
            except AliasRefused:
                continue
            target = f"model:{event.name}@{alias}"
            await self._append(event, "model.alias_delete", target, record.current.version, None, written)
            return
        raise WebhookRefused(503, f"{event.name}@{alias} kept changing; try again")

    async def _append(
        self,
        event: MlflowModelEvent,
        action: str,
        target: str,
        before: int | None,
        after: int | None,
        revision: int | None = None,
    ) -> None:
        entry = AuditEntry(
            service="registry",
            action=action,
            actor=MLFLOW,
            token_id=MLFLOW,
            target=target,
            model=event.name,
            before={"version": before} if before is not None else None,
            after={"version": after, **({"revision": revision} if revision else {})} if after else None,
            detail=f"made in MLflow directly (webhook delivery {event.delivery_id})",
        )
        # one entry per change: the alias record's revision, else the delivery
        key = f"alias:{event.name}:{event.alias}:{revision}" if revision else f"mlflow:{event.delivery_id}"
        await self.audit.append(entry, msg_id=key)


class WebhookReceiver:
    """Verify, parse, handle: an HTTP status and an answer body for one delivery."""

    def __init__(self, secret: str, max_age: float, events: Callable[[], MlflowEvents | None]) -> None:
        self.secret, self.max_age, self.events = secret, max_age, events

    async def receive(
        self, headers: Mapping[str, str], body: bytes, now: float
    ) -> tuple[int, dict[str, Any]]:
        try:
            delivery_id = verify(self.secret, headers, body, now, self.max_age)
            event = parse(body, delivery_id)
            events = self.events()
            if events is None:
                raise WebhookRefused(503, "the registry is starting")
            told = await events.handle(event)
        except WebhookRefused as exc:
            if exc.status == 401:
                log.warning("MLflow webhook refused: %s", exc.message)
            return exc.status, {"detail": exc.message}
        except Exception:  # the bus or the bucket away: MLflow retries a 5xx
            log.exception("MLflow webhook not bridged")
            return 503, {"detail": "not bridged now; retry"}
        return 200, {"bridged": told.event, "model": told.name, "by_trainyard": told.by_trainyard}


Asgi = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]  # scope, receive, send


def webhook_asgi(receiver: WebhookReceiver, max_bytes: int, clock: Callable[[], float]) -> Asgi:
    """``POST /mlflow/webhook``, its body read up to ``max_bytes`` (a larger one is a 413)."""

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await _answer(send, 405, {"detail": "POST only"})
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            await _answer(send, 413, {"detail": f"larger than {max_bytes} bytes"})
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > max_bytes:
                await _answer(send, 413, {"detail": f"larger than {max_bytes} bytes"})
                return
            if not message.get("more_body"):
                break
        status, answer = await receiver.receive(headers, bytes(body), clock())
        await _answer(send, status, answer)

    return app


async def _answer(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
