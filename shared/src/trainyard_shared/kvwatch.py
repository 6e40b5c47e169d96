"""One long-lived watch of a KV bucket, handing every entry to a callback.

The job view, the queue configurations and the executor directory each keep an in-memory copy of a
bucket this way. ``ready`` is set once the watch has delivered what the bucket held at start.

nats-py's own "caught up" marker (a None from the watcher) can come before entries the server had
already sent: it is queued when the consumer reports nothing pending, while the callbacks of
messages already received still wait for the watch's set-up to finish. An executor recovering
from such a view missed a record and stopped an attempt it should have adopted (CI). So ``ready``
also waits until an entry at the bucket's last sequence, read after the marker, has been handed
over: with one value per key delivered, the newest revision is the stream's last message.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from trainyard_shared.tasks import cancel_and_wait

# a tail's message headers as the operation nats-py's watcher names (nats-server 2.11+ marks an
# expiry or removal by the server with Nats-Marker-Reason instead of KV-Operation)
TAIL_OPERATIONS = {"MaxAge": KV_PURGE, "Purge": KV_PURGE, "Remove": KV_DEL}


class KvWatch:
    def __init__(
        self,
        kv: KeyValue,
        on_entry: Callable[[Any], None],
        name: str,
        before_ready: Callable[[], None] | None = None,
    ) -> None:
        self.kv = kv
        self.on_entry = on_entry
        self.before_ready = before_ready  # runs once the start's read is handed over, before ``ready``
        self.name = name
        self.ready = asyncio.Event()
        self.newest_revision = 0  # of anything handed over, a delete too
        self.entries = 0  # handed over so far
        self._marker = asyncio.Event()
        self._seen = asyncio.Event()  # set whenever newest_revision moves
        self._watcher: KeyValue.KeyWatcher | None = None
        self._tail: Any = None  # the subscription of start_after (nats-py's is unannotated)
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 30.0) -> None:
        """Read what the bucket holds, then ``ready``. ``timeout`` bounds a stretch with no entry
        handed over, not the whole read: a history of 50,000 records took over 30 s to read on a
        loaded machine, and a fixed deadline made the scheduler exit at every restart; a read
        that stalls still fails (TimeoutError)."""
        self._watcher = await self.kv.watchall()
        self._task = asyncio.create_task(self._run(), name=self.name)
        caught_up = asyncio.create_task(self._caught_up(), name=f"{self.name}-caught-up")
        try:
            while True:
                handed = self.entries
                done, _ = await asyncio.wait({caught_up}, timeout=timeout)
                if done:
                    caught_up.result()
                    break
                if self.entries == handed:
                    raise TimeoutError(f"{self.name}: no entry of the bucket in {timeout:g} s")
        finally:
            await cancel_and_wait(caught_up)
        if self.before_ready is not None:
            self.before_ready()
        self.ready.set()

    async def start_after(self, last_seq: int) -> None:
        """Hand over every change stored after ``last_seq`` (one ordered consumer from the next
        sequence), ``ready`` at once: what the bucket held up to ``last_seq`` the caller has read
        otherwise (liveread.py). ``newest_revision`` starts there, so a wait for the view to reach
        the bucket's last sequence (the scheduler's catch-up) does not wait for old revisions."""
        kv: Any = self.kv  # nats-py keeps the bucket's stream, subject prefix and context private
        self.newest_revision = last_seq
        prefix: str = kv._pre

        async def on_message(msg: Msg) -> None:
            reason = (msg.headers or {}).get(KV_OP) or (msg.headers or {}).get("Nats-Marker-Reason")
            meta = msg.metadata
            self._hand_over(
                KeyValue.Entry(
                    bucket=kv._name,
                    key=msg.subject[len(prefix) :],
                    value=msg.data,
                    revision=meta.sequence.stream,
                    delta=meta.num_pending,
                    created=None,
                    operation=TAIL_OPERATIONS.get(reason or "", reason),
                )
            )

        self._tail = await kv._js.subscribe(
            f"{prefix}>",
            stream=kv._stream,
            cb=on_message,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=last_seq + 1),
            inactive_threshold=300.0,
        )
        self.ready.set()

    def _hand_over(self, entry: KeyValue.Entry) -> None:
        self.entries += 1
        revision = entry.revision or 0
        if revision > self.newest_revision:
            self.newest_revision = revision
            self._seen.set()
        self.on_entry(entry)

    async def _caught_up(self) -> None:
        await self._marker.wait()
        status = await self.kv.status()
        state = status.stream_info.state
        if state.messages == 0:
            return  # empty (or every value expired): nothing more will come for the start
        while self.newest_revision < state.last_seq:
            self._seen.clear()
            await self._seen.wait()

    async def stop(self) -> None:
        if self._tail is not None:
            with contextlib.suppress(Exception):
                await self._tail.unsubscribe()
            self._tail = None
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()  # type: ignore[no-untyped-call]  # nats-py: KeyWatcher.stop is unannotated
        await cancel_and_wait(self._task)
        self.ready.clear()
        self._marker.clear()

    async def _run(self) -> None:
        assert self._watcher is not None
        async for entry in self._watcher:
            if entry is None:  # nats-py: what the bucket held at start has been sent (see above)
                self._marker.set()
                continue
            self._hand_over(entry)
