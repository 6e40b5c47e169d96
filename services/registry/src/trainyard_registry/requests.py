"""The API's requests to the registry: read an alias or a version, promote, roll back, compare.

An alias change is, in order: a compare-and-set of the alias record in the aliases bucket (the one
decision: of two racing changes one wins, the other is answered 409), then MLflow's alias, then an
audit entry, then the record marked applied. A crash in between leaves the record unapplied, and
the next request on that alias finishes the steps first (MLflow's alias is set again, the audit
entry carries the record's revision in its message id, so a repeat is stored once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from trainyard_contracts import FieldError
from trainyard_contracts.audit import AuditEntry
from trainyard_contracts.modelregistry import (
    AliasRecord,
    Identity,
    RegistryReply,
    RegistryRequest,
    VersionInfo,
)
from trainyard_registry.aliases import (
    AliasRefused,
    check_expected,
    judge,
    key,
    promoted,
    rolled_back,
    state_of,
)
from trainyard_registry.deferred import ModelStore
from trainyard_shared.auditlog import AuditLog
from trainyard_shared.jobstore import JobStore

log = logging.getLogger("trainyard.registry.requests")

SYSTEM = Identity(name="registry", token_id="registry")


class AliasStore:
    """Alias records in the aliases bucket, read with their revision, written by compare-and-set."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def read(self, name: str, alias: str) -> tuple[AliasRecord | None, int]:
        try:
            entry = await self.kv.get(key(name, alias))
        except KeyNotFoundError:
            return None, 0
        if not entry.value:
            return None, int(entry.revision or 0)
        return AliasRecord.model_validate_json(entry.value), int(entry.revision or 0)

    async def write(self, record: AliasRecord, revision: int) -> int:
        """Store ``record`` if the alias is still at ``revision`` (0: never set); else 409."""
        value = record.model_dump_json().encode()
        try:
            if revision == 0:
                return int(await self.kv.create(key(record.name, record.alias), value))
            return int(await self.kv.update(key(record.name, record.alias), value, last=revision))
        except KeyWrongLastSequenceError as exc:
            raise AliasRefused(
                409,
                "alias",
                f"{record.name}@{record.alias} was changed by another request at the same time; "
                "look again and retry",
            ) from exc


class RegistryRequests:
    def __init__(
        self,
        aliases: AliasStore,
        mlflow: ModelStore,
        jobs: JobStore,
        audit: AuditLog,
        clock: Callable[[], datetime],
    ) -> None:
        self.aliases, self.mlflow, self.jobs, self.audit, self.clock = aliases, mlflow, jobs, audit, clock

    async def answer(self, kind: str, body: bytes) -> RegistryReply:
        try:
            request = RegistryRequest.model_validate_json(body)
        except (ValidationError, ValueError) as exc:
            return _error(400, "(request)", str(exc)[:1000])
        try:
            if kind == "alias":
                return await self.alias(request)
            if kind == "version":
                return RegistryReply(ok=True, version=await self._version(request.name, request.version))
            if kind == "promote":
                return await self.promote(request)
            if kind == "rollback":
                return await self.rollback(request)
            if kind == "compare":
                return await self.compare(request)
            return _error(404, "(request)", f"no request kind {kind!r}")
        except AliasRefused as exc:
            return _error(exc.status, exc.field, exc.message)

    async def alias(self, request: RegistryRequest) -> RegistryReply:
        """The alias's state, its holder, and (given ``version``) that version: what the API checks
        its rules on before asking for a change. Finishes a change a crash left unapplied."""
        alias = _required_alias(request)
        record, revision = await self._settled(request.name, alias)
        holder = record.current.version if record and record.current else None
        asked = request.version
        if asked is None and record is not None and record.history:
            asked = record.history[-1].version  # what a rollback would restore
        return RegistryReply(
            ok=True,
            state=state_of(record, request.name, alias, revision),
            holder=await self._version(request.name, holder) if holder else None,
            version=await self._version(request.name, asked) if asked else None,
        )

    async def promote(self, request: RegistryRequest) -> RegistryReply:
        alias = _required_alias(request)
        if request.version is None:
            raise AliasRefused(422, "version", "required field is missing")
        candidate = await self._version(request.name, request.version)
        record, revision = await self._settled(request.name, alias)
        check_expected(request.expected_revision, revision, record)
        holder_version = record.current.version if record and record.current else None
        holder = await self._version(request.name, holder_version) if holder_version else None
        reason = None
        if request.if_better is not None:
            verdict = judge(
                request.if_better,
                candidate.version,
                candidate.metrics,
                holder_version,
                holder.metrics if holder else {},
            )
            reason = verdict.reason
            if not verdict.promote:
                state = state_of(record, request.name, alias, revision)
                return RegistryReply(ok=True, state=state, version=candidate, holder=holder, reason=reason)
        by = (request.by or SYSTEM).name
        changed = promoted(record, request.name, alias, candidate.version, by, self.clock())
        if changed is None:
            state = state_of(record, request.name, alias, revision)
            reason = reason or f"v{candidate.version} already holds {alias}"
            return RegistryReply(ok=True, state=state, version=candidate, holder=holder, reason=reason)
        written = await self.aliases.write(changed, revision)
        new_revision = await self._apply(changed, written, request.by or SYSTEM, holder_version)
        state = state_of(changed, request.name, alias, new_revision)
        return RegistryReply(
            ok=True, state=state, version=candidate, holder=holder, changed=True, reason=reason
        )

    async def rollback(self, request: RegistryRequest) -> RegistryReply:
        alias = _required_alias(request)
        record, revision = await self._settled(request.name, alias)
        check_expected(request.expected_revision, revision, record)
        changed = rolled_back(record, request.name, alias, (request.by or SYSTEM).name, self.clock())
        assert record is not None and record.current is not None and changed.current is not None
        holder = await self._version(request.name, record.current.version)
        restored = await self._version(request.name, changed.current.version)
        written = await self.aliases.write(changed, revision)
        new_revision = await self._apply(changed, written, request.by or SYSTEM, record.current.version)
        state = state_of(changed, request.name, alias, new_revision)
        return RegistryReply(ok=True, state=state, version=restored, holder=holder, changed=True)

    async def compare(self, request: RegistryRequest) -> RegistryReply:
        if request.version is None or request.other_version is None:
            field = "version" if request.version is None else "other_version"
            raise AliasRefused(422, field, "required field is missing")
        first = await self._version(request.name, request.version)
        second = await self._version(request.name, request.other_version)
        return RegistryReply(ok=True, versions=[first, second])

    # ------------------------------------------------------------------ steps

    async def _version(self, name: str, version: int | None) -> VersionInfo:
        if version is None:
            raise AliasRefused(422, "version", "required field is missing")
        info = await asyncio.to_thread(self.mlflow.version_info, name, version)
        if info is None:
            raise AliasRefused(404, "version", f"model {name!r} has no version {version}")
        if info.job_id and info.image is None:
            found = await self.jobs.get(info.job_id)
            if found is not None and found[0].spec.image:
                info = info.model_copy(update={"image": found[0].spec.image})
        return info

    async def _settled(self, name: str, alias: str) -> tuple[AliasRecord | None, int]:
        """The alias record, with a change a crash left unapplied finished first."""
        record, revision = await self.aliases.read(name, alias)
        if record is not None and not record.applied and record.current is not None:
            by = Identity(name=record.current.by or "registry", token_id="(recovered)")
            previous = None  # unknown after a crash: the audit entry says so
            await self._apply(record, revision, by, previous, recovered=True)
            record, revision = await self.aliases.read(name, alias)
        return record, revision

    async def _apply(
        self,
        record: AliasRecord,
        revision: int,
        by: Identity,
        previous: int | None,
        recovered: bool = False,
    ) -> int:
        """MLflow's alias, the audit entry, then the record marked applied: its new revision."""
        assert record.current is not None
        await asyncio.to_thread(self.mlflow.set_alias, record.name, record.alias, record.current.version)
        action = record.last_action or "promote"
        entry = AuditEntry(
            service="registry",
            action=f"model.{action}",
            actor=by.name,
            token_id=by.token_id,
            team=by.team,
            admin=by.admin,
            target=f"model:{record.name}@{record.alias}",
            model=record.name,
            before={"version": previous} if previous is not None else None,
            after={"version": record.current.version, "revision": revision},
            detail="finished after an interruption" if recovered else "",
        )
        await self.audit.append(entry, msg_id=f"alias:{record.name}:{record.alias}:{revision}")
        log.info(
            "alias moved",
            extra={"model": record.name, "alias": record.alias, "version": record.current.version},
        )
        try:
            return await self.aliases.write(record.model_copy(update={"applied": True}), revision)
        except AliasRefused:
            return revision  # another request finished it (or moved the alias on): nothing left


def _required_alias(request: RegistryRequest) -> str:
    if request.alias is None:
        raise AliasRefused(422, "alias", "required field is missing")
    return request.alias


def _error(status: int, field: str, message: str) -> RegistryReply:
    return RegistryReply(ok=False, status=status, errors=[FieldError(field=field, message=message)])
