"""The queue configurations, kept current by watching the ``queues`` KV bucket.

The submission service writes them (``PUT /v1/queues/{name}``, admin only) and reads them on every
submission (shell allowed?); the scheduler reads them on every planning pass, so a change applies
from the next pass on. Reading the view instead of the bucket saves a round trip per submission;
the replica that wrote a change sees it at once (``note``), the others within the watch's delay
(milliseconds on one cluster). A value that does not parse is logged and skipped: that queue then
behaves as an unconfigured one (weight 1, no quota).
"""

from __future__ import annotations

import logging

from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import ValidationError

from trainyard_contracts import QueueConfig
from trainyard_shared.kvwatch import KvWatch

log = logging.getLogger("trainyard.queues")


class QueueView:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.queues: dict[str, QueueConfig] = {}
        self.revisions: dict[str, int] = {}
        self._watch = KvWatch(kv, self._on_entry, "queueview")
        self.ready = self._watch.ready

    async def start(self, timeout: float = 30.0) -> None:
        await self._watch.start(timeout)

    async def stop(self) -> None:
        await self._watch.stop()

    def _on_entry(self, entry: KeyValue.Entry) -> None:
        revision = entry.revision or 0
        if revision < self.revisions.get(entry.key, 0):
            return  # older than what this replica wrote itself a moment ago
        if entry.operation in (KV_DEL, KV_PURGE):
            self.forget(entry.key, revision)
            return
        try:
            self.note(QueueConfig.model_validate_json(entry.value or b""), revision)
        except ValidationError as exc:
            self.forget(entry.key, revision)
            log.error("unreadable queue configuration", extra={"queue": entry.key, "error": str(exc)[:500]})

    def note(self, config: QueueConfig, revision: int) -> None:
        """A configuration stored at ``revision`` (from the watch, or this replica's own write)."""
        if revision >= self.revisions.get(config.name, 0):
            self.queues[config.name] = config
            self.revisions[config.name] = revision

    def forget(self, name: str, revision: int) -> None:
        if revision >= self.revisions.get(name, 0):
            self.queues.pop(name, None)
            self.revisions[name] = revision

    def get(self, name: str) -> QueueConfig | None:
        return self.queues.get(name)

    def configs(self) -> tuple[QueueConfig, ...]:
        return tuple(self.queues.values())
