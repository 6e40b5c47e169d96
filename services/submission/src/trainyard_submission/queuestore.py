"""Queue configuration in the ``<prefix>_queues`` bucket: key = queue name, value = QueueConfig JSON.

Every write is a compare-and-set on the entry's revision (``If-Match`` carries it over HTTP). A
queue with no entry behaves as ``QueueConfig(name=...)``, except ``default``, which behaves as
``DEFAULT_QUEUE`` (it allows ``shell: true``) until an admin writes it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from trainyard_contracts import DEFAULT_QUEUE, FieldError, QueueConfig, SpecError
from trainyard_shared.queueview import QueueView
from trainyard_submission.joblist import BucketReader, LatestValues


@dataclass(frozen=True)
class StoredQueue:
    config: QueueConfig
    revision: int  # 0: not in the bucket (the built-in default)

    def as_json(self) -> dict[str, object]:
        return {**self.config.model_dump(mode="json"), "revision": self.revision}


class QueueNotFound(LookupError):
    pass


# the known queues an error lists, at most: the message stays one readable line
KNOWN_SHOWN = 20


class UnknownQueue(SpecError):
    """A queue no admin configured (``default`` always exists): a job there would run under
    defaults nobody chose, a token for it would act on nothing (HTTP 422, bus: rejected)."""

    def __init__(self, name: str, known: list[str], field: str = "queue") -> None:
        shown = ", ".join(known[:KNOWN_SHOWN]) + (", ..." if len(known) > KNOWN_SHOWN else "")
        super().__init__(
            [
                FieldError(
                    field=field,
                    message=f"unknown queue {name!r}; known queues: {shown} (an admin creates one with "
                    f"`trainyard queues set {name}` or PUT /v1/queues/{name})",
                )
            ]
        )


class RevisionMismatch(RuntimeError):
    def __init__(self, name: str, expected: int, actual: int) -> None:
        self.expected, self.actual = expected, actual
        super().__init__(f"queue {name!r} is at revision {actual}, not {expected}")


def builtin(name: str) -> QueueConfig:
    return DEFAULT_QUEUE if name == DEFAULT_QUEUE.name else QueueConfig(name=name)


class QueueStore:
    """``view``: the watched configurations, read on every submission instead of the bucket (one
    round trip less per job); this replica's own writes go into it at once."""

    def __init__(
        self, kv: KeyValue, view: QueueView | None = None, reader: BucketReader | None = None
    ) -> None:
        self.kv = kv
        self.view = view
        self.reader = reader

    async def get(self, name: str) -> StoredQueue | None:
        try:
            entry = await self.kv.get(name)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        try:
            return StoredQueue(QueueConfig.model_validate_json(entry.value), entry.revision or 0)
        except ValidationError:  # written by hand and broken: treat as the built-in, say so on read
            return None

    async def effective(self, name: str) -> QueueConfig:
        """The configuration that applies to a queue right now."""
        if self.view is not None and self.view.ready.is_set():
            return self.view.get(name) or builtin(name)
        stored = await self.get(name)
        return stored.config if stored else builtin(name)

    async def require(self, name: str, field: str = "queue") -> QueueConfig:
        """The configuration of a queue that exists: ``default`` or one an admin wrote; otherwise
        UnknownQueue naming ``field`` and the known queues."""
        if self.view is not None and self.view.ready.is_set():
            config = self.view.get(name)
        else:
            stored = await self.get(name)
            config = stored.config if stored else None
        if config is not None:
            return config
        if name == DEFAULT_QUEUE.name:
            return DEFAULT_QUEUE
        raise UnknownQueue(name, await self.names(), field)

    async def names(self) -> list[str]:
        if self.view is not None and self.view.ready.is_set():
            return sorted({DEFAULT_QUEUE.name, *self.view.queues})
        if self.reader is None:
            return [DEFAULT_QUEUE.name]
        return [q.config.name for q in await self.list()]

    async def list(self) -> list[StoredQueue]:
        if self.reader is None:
            raise RuntimeError("listing queues needs a BucketReader of the queues bucket")
        found = {}
        # one ordered read to what was stored when it began; nats-py's kv.keys() can answer
        # "no keys" when its consumer delivered faster than it counted
        for key, (value, revision) in (await self.reader.read(LatestValues())).values.items():
            with contextlib.suppress(ValidationError):  # written by hand and broken: built-in
                found[key] = StoredQueue(QueueConfig.model_validate_json(value), revision)
        if DEFAULT_QUEUE.name not in found:
            found[DEFAULT_QUEUE.name] = StoredQueue(DEFAULT_QUEUE, 0)
        return [found[k] for k in sorted(found)]

    async def put(self, config: QueueConfig, if_revision: int | None = None) -> tuple[StoredQueue, bool]:
        """Create or replace by compare-and-set; returns the stored entry and whether it was new.

        With ``if_revision`` (0 = must not exist) a concurrent change raises RevisionMismatch;
        without it the write is retried on the revision just read (last writer wins, never a lost
        half-write).
        """
        payload = config.model_dump_json().encode()
        for _ in range(10):
            current = await self._revision(config.name)
            if if_revision is not None and current != if_revision:
                raise RevisionMismatch(config.name, if_revision, current)
            try:
                if current == 0:
                    revision = await self.kv.create(config.name, payload)
                else:
                    revision = await self.kv.update(config.name, payload, last=current)
            except KeyWrongLastSequenceError:
                if if_revision is not None:
                    actual = await self._revision(config.name)
                    raise RevisionMismatch(config.name, if_revision, actual) from None
                continue
            if self.view is not None:
                self.view.note(config, revision)
            return StoredQueue(config, revision), current == 0
        raise RevisionMismatch(config.name, current, await self._revision(config.name))

    async def delete(self, name: str, if_revision: int | None = None) -> None:
        current = await self._revision(name)
        if current == 0:
            raise QueueNotFound(name)
        if if_revision is not None and if_revision != current:
            raise RevisionMismatch(name, if_revision, current)
        try:
            await self.kv.delete(name, last=current)
        except KeyWrongLastSequenceError:
            raise RevisionMismatch(name, current, await self._revision(name)) from None
        if self.view is not None:
            # nats-py does not tell the delete marker's revision: one past the entry's is a floor
            self.view.forget(name, current + 1)

    async def _revision(self, name: str) -> int:
        """The live entry's revision, 0 when there is none (never written, deleted or purged)."""
        try:
            entry = await self.kv.get(name)
        except KeyNotFoundError:
            return 0
        return (entry.revision or 0) if entry.value else 0
