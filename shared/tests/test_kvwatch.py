"""A bucket watch is ready only once what the bucket held at start has been handed over."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from trainyard_shared.kvwatch import KvWatch
from trainyard_shared.testing.helpers import Bus


@pytest.mark.service
async def test_every_value_held_at_start_is_handed_over_before_ready(nats_server, prefix):
    async with Bus(nats_server.url, prefix) as bus:
        kv = await bus.js.create_key_value(bucket=f"{prefix}_watchtest", history=3)
        for i in range(200):
            await kv.put(f"k{i:03d}", b"v1")
        await kv.put("k000", b"v2")
        await kv.delete("k001")
        seen: dict[str, bytes | None] = {}
        watch = KvWatch(kv, lambda e: seen.__setitem__(e.key, e.value), "test")
        await watch.start(10)
        try:
            assert watch.ready.is_set()
            assert len(seen) == 200 and seen["k000"] == b"v2" and not seen["k001"]
            assert watch.newest_revision == (await kv.status()).stream_info.state.last_seq
        finally:
            await watch.stop()


@pytest.mark.service
async def test_an_empty_bucket_is_ready_at_once(nats_server, prefix):
    async with Bus(nats_server.url, prefix) as bus:
        kv = await bus.js.create_key_value(bucket=f"{prefix}_emptywatch")
        watch = KvWatch(kv, lambda e: None, "test")
        await watch.start(10)
        assert watch.ready.is_set()
        await watch.stop()


class EarlyMarkerBucket:
    """nats-py's watcher as CI caught it: the "caught up" marker (None) before an entry the server
    had already sent. A stand-in for the watcher only; the race is in nats-py's set-up and cannot
    be produced on demand against a real server."""

    def __init__(self, release: asyncio.Event) -> None:
        self.release = release

    async def watchall(self):
        release = self.release

        class Watcher:
            def __aiter__(self):
                return self._gen()

            async def _gen(self):
                yield None
                await release.wait()
                yield SimpleNamespace(key="job1", value=b"x", revision=7, operation=None)
                await asyncio.Event().wait()  # a live watch: no more entries

            async def stop(self):
                return None

        return Watcher()

    async def status(self):
        return SimpleNamespace(stream_info=SimpleNamespace(state=SimpleNamespace(messages=3, last_seq=7)))


@pytest.mark.unit
async def test_a_marker_that_comes_early_does_not_make_the_watch_ready():
    release = asyncio.Event()
    seen: list[str] = []
    watch = KvWatch(EarlyMarkerBucket(release), lambda e: seen.append(e.key), "test")  # type: ignore[arg-type]
    starting = asyncio.create_task(watch.start(10))
    await asyncio.wait_for(watch._marker.wait(), 5)  # the early marker has been taken
    assert not watch.ready.is_set() and not starting.done()
    release.set()
    await asyncio.wait_for(starting, 5)
    assert watch.ready.is_set() and seen == ["job1"]
    await watch.stop()


class SlowBucket:
    """A bucket read slowly: ``count`` entries, ``gap`` seconds apart (a large history on a loaded
    machine), then the caught-up marker, or none (``stall``: the read stops after the first
    entry). A stand-in for the watcher only: a real server cannot be made to send slowly on demand."""

    def __init__(self, count: int, gap: float, stall: bool = False) -> None:
        self.count, self.gap, self.stall = count, gap, stall

    async def watchall(self):
        bucket = self

        class Watcher:
            def __aiter__(self):
                return self._gen()

            async def _gen(self):
                for revision in range(1, bucket.count + 1):
                    yield SimpleNamespace(key=f"job{revision}", value=b"x", revision=revision, operation=None)
                    if bucket.stall:
                        await asyncio.Event().wait()
                    await asyncio.sleep(bucket.gap)
                yield None
                await asyncio.Event().wait()

            async def stop(self):
                return None

        return Watcher()

    async def status(self):
        state = SimpleNamespace(messages=self.count, last_seq=self.count)
        return SimpleNamespace(stream_info=SimpleNamespace(state=state))


@pytest.mark.unit
async def test_a_read_longer_than_the_timeout_that_keeps_moving_gets_ready():
    seen: list[str] = []
    watch = KvWatch(SlowBucket(count=40, gap=0.05), lambda e: seen.append(e.key), "test")  # type: ignore[arg-type]
    await watch.start(timeout=0.5)  # the whole read takes ~2 s: four times the timeout
    assert watch.ready.is_set() and len(seen) == 40
    await watch.stop()


@pytest.mark.unit
async def test_a_read_that_stalls_fails_after_the_timeout():
    watch = KvWatch(SlowBucket(count=40, gap=0.05, stall=True), lambda e: None, "test")  # type: ignore[arg-type]
    with pytest.raises(TimeoutError, match="no entry of the bucket"):
        await watch.start(timeout=0.5)
    assert not watch.ready.is_set() and watch.entries == 1
    await watch.stop()
