"""In-memory stand-ins for the bus, so a core's decisions are tested without a server.

- ``MemoryBucket``: a KV bucket in a dict with nats-py's compare-and-set answers (``create`` of a
  key that exists and ``update`` at a stale revision raise ``KeyWrongLastSequenceError``). The real
  ``JobStore`` runs over it, and a ``JobView`` fed by the store's writes (``on_written``) follows it
  without a watch: ``memory_job_store()`` builds the pair.
- ``MemoryPublisher``: the real ``EventPublisher`` (same subjects, message ids, payloads) whose
  publishes land in ``published``; ``fail_next`` makes the next ones fail as a lost server would.
- ``MemoryCommandSender``: the real ``CommandSender`` whose ``send`` lands in ``sent``.
- ``MemoryExecutorDirectory``: heartbeats put here are online until their lease expires.

The real-server tests stay: these fakes say nothing about JetStream's own behaviour (dedup windows,
redelivery, watches), only about what a core decides and writes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

import nats.errors
from faststream.nats import NatsBroker
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from trainyard_contracts import CancelAttempt, ExecutorHeartbeat, StartAttempt, Subjects
from trainyard_shared.executors import ExecutorDirectory
from trainyard_shared.jobstore import JobStore
from trainyard_shared.jobview import JobView
from trainyard_shared.publishing import CommandSender, EventPublisher, Outgoing

NO_BROKER = cast(NatsBroker, None)  # the fakes below never reach a broker


class MemoryBucket(KeyValue):
    def __init__(self, name: str = "memory") -> None:  # no JetStream behind it: no super().__init__
        self.name = name
        self.entries: dict[str, KeyValue.Entry] = {}
        self.revision = 0

    def _write(self, key: str, value: bytes) -> int:
        self.revision += 1
        self.entries[key] = KeyValue.Entry(self.name, key, value, self.revision, 0, None, None)
        return self.revision

    async def get(self, key: str, revision: int | None = None, validate_keys: bool = True) -> KeyValue.Entry:
        entry = self.entries.get(key)
        if entry is None or (revision is not None and entry.revision != revision):
            raise KeyNotFoundError
        return entry

    async def create(
        self, key: str, value: bytes, validate_keys: bool = True, msg_ttl: float | None = None
    ) -> int:
        if key in self.entries:
            raise KeyWrongLastSequenceError
        return self._write(key, value)

    async def update(
        self, key: str, value: bytes, last: int | None = None, validate_keys: bool = True
    ) -> int:
        entry = self.entries.get(key)
        if (entry.revision if entry is not None else 0) != (last or 0):
            raise KeyWrongLastSequenceError
        return self._write(key, value)

    async def put(self, key: str, value: bytes, validate_keys: bool = True) -> int:
        return self._write(key, value)

    async def delete(
        self, key: str, last: int | None = None, validate_keys: bool = True, msg_ttl: float | None = None
    ) -> bool:
        return self.entries.pop(key, None) is not None


def memory_job_store(keep_finished: int | None = None) -> tuple[JobStore, JobView]:
    """The real job store over an in-memory bucket, and a view that follows its writes."""
    bucket = MemoryBucket("jobs")
    store = JobStore(bucket)
    view = JobView(bucket, keep_finished=keep_finished)
    store.on_written(view.apply)
    store.read_through(view)
    return store, view


class MemoryPublisher(EventPublisher):
    def __init__(self, subjects: Subjects | None = None, max_payload: int = 1024 * 1024) -> None:
        super().__init__(NO_BROKER, subjects or Subjects())
        self.published: list[Outgoing] = []
        self.payload_limit = max_payload
        self.fail_next = 0  # how many of the next publish calls fail (a server that is gone)

    async def emit(self, event: Any, **headers: str) -> Any:
        return await self.publish_in_order([self.outgoing(event, **headers)])

    async def publish_in_order(self, sends: Sequence[Outgoing], timeout: float = 5.0) -> list[Any]:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise nats.errors.TimeoutError
        self.published.extend(sends)
        return [None for _ in sends]

    async def has_event(self, subject: str) -> bool:
        return any(p.subject == subject for p in self.published)

    async def announced_attempt(self, subject: str) -> int | None:
        last = next((p for p in reversed(self.published) if p.subject == subject), None)
        return None if last is None else int(json.loads(last.payload).get("attempt") or 0)

    def max_payload(self) -> int:
        return self.payload_limit

    def subjects_published(self) -> list[str]:
        return [p.subject for p in self.published]


class MemoryCommandSender(CommandSender):
    def __init__(self, subjects: Subjects | None = None) -> None:
        super().__init__(NO_BROKER, subjects or Subjects())
        self.sent: list[StartAttempt | CancelAttempt] = []

    async def send(self, command: StartAttempt | CancelAttempt) -> None:
        self.sent.append(command)


class MemoryExecutorDirectory(ExecutorDirectory):
    def __init__(self) -> None:
        super().__init__(MemoryBucket("executors"))
        self.beats: dict[str, ExecutorHeartbeat] = {}

    async def put(self, heartbeat: ExecutorHeartbeat) -> None:
        self.beats[heartbeat.executor_id] = heartbeat

    async def remove(self, executor_id: str) -> None:
        self.beats.pop(executor_id, None)

    async def all(self, fresh: bool = False) -> list[ExecutorHeartbeat]:
        return list(self.beats.values())
