"""The scheduler's leader lease against a real KV bucket (nats-server from the session fixture).

The single steps run on controlled clocks (wall and monotonic), so expiry is shown without waiting
for it; the loop tests run on real time and poll conditions with deadlines.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest

from trainyard_contracts._time import utcnow
from trainyard_scheduler.leader import LEASE_KEY, LeaderLease, Lease
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_shared.tasks import cancel_and_wait

pytestmark = pytest.mark.service


class Clocks:
    """A wall clock and a monotonic clock that move only when told."""

    def __init__(self) -> None:
        self.wall = utcnow()
        self.mono = 1000.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono += seconds


@pytest.fixture
async def kv(nats_client, prefix):
    js = nats_client.jetstream()
    return await js.create_key_value(bucket=f"{prefix}_leases", history=1)


def replica(kv, name: str, clocks: Clocks | None = None, lease: float = 3.0, **kw) -> LeaderLease:
    extra = {"clock": clocks.now, "monotonic": clocks.monotonic} if clocks else {}
    return LeaderLease(kv, name, lease_seconds=lease, **extra, **kw)


async def stored(kv) -> tuple[Lease, int]:
    entry = await kv.get(LEASE_KEY)
    return Lease.model_validate_json(entry.value), entry.revision


def changes(lease: LeaderLease) -> list[tuple[bool, int]]:
    seen: list[tuple[bool, int]] = []
    lease.on_change(lambda leader, term: seen.append((leader, term)))
    return seen


async def eventually(probe, timeout: float, what: str):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if result := probe():
            return result
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} not reached within {timeout}s")


async def test_the_first_replica_creates_the_lease_and_the_next_stays_standby(kv):
    clocks = Clocks()
    a, b = replica(kv, "a", clocks), replica(kv, "b", clocks)
    seen = changes(a)

    assert await a.try_acquire()
    assert not await b.try_acquire()

    lease, _ = await stored(kv)
    assert (lease.holder, lease.term, lease.released) == ("a", 1, False)
    assert lease.expires_at == clocks.wall + timedelta(seconds=3)
    assert a.is_leader and a.term == 1 and seen == [(True, 1)]
    assert not b.is_leader and b.holder == "a"


async def test_renewal_is_a_compare_and_set_that_extends_the_lease(kv):
    clocks = Clocks()
    a = replica(kv, "a", clocks)
    assert await a.try_acquire()
    _, first_revision = await stored(kv)

    clocks.advance(1.0)
    assert await a.renew()

    lease, revision = await stored(kv)
    assert revision > first_revision
    assert (lease.holder, lease.term) == ("a", 1)
    assert lease.expires_at == clocks.wall + timedelta(seconds=3)
    clocks.advance(2.5)  # past the first lease's validity, within the renewed one
    assert a.is_leader


async def test_an_expired_lease_is_taken_with_the_next_term_and_the_stale_holder_cannot_renew(kv):
    a_clocks, b_clocks = Clocks(), Clocks()
    a, b = replica(kv, "a", a_clocks), replica(kv, "b", b_clocks)
    a_seen = changes(a)
    assert await a.try_acquire()

    b_clocks.advance(2.9)  # not yet expired by its own expires_at
    assert not await b.try_acquire()
    b_clocks.advance(0.2)
    assert await b.try_acquire()

    lease, _ = await stored(kv)
    assert (lease.holder, lease.term) == ("b", 2) and b.term == 2
    # a was paused all along: its clocks did not move, so it still thinks it leads...
    assert a.is_leader
    # ...until its next renewal, a compare-and-set on a revision that has moved
    assert not await a.renew()
    assert not a.is_leader and a_seen == [(True, 1), (False, 1)]
    assert (await stored(kv))[0].holder == "b"
    assert await b.renew()


async def test_a_paused_holder_stops_acting_before_anyone_may_take_over(kv):
    clocks = Clocks()
    a = replica(kv, "a", clocks)
    assert await a.try_acquire()
    clocks.advance(2.75)  # 0.9 of the lease: the safety margin keeps it short of expiry
    assert not a.is_leader
    lease, _ = await stored(kv)
    assert not lease.expired(clocks.now())  # the others still wait: no overlap


class FlakyKV:
    """The real bucket, but updates fail as if NATS could not be reached."""

    def __init__(self, kv) -> None:
        self.kv = kv
        self.down = False

    async def update(self, *args, **kwargs):
        if self.down:
            raise TimeoutError("nats: timeout")
        return await self.kv.update(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.kv, name)


async def test_a_leader_that_cannot_reach_nats_for_longer_than_the_lease_steps_down(kv):
    clocks = Clocks()
    flaky = FlakyKV(kv)
    a = replica(flaky, "a", clocks)
    seen = changes(a)
    assert await a.try_acquire()

    flaky.down = True
    clocks.advance(1.0)
    assert await a.renew()  # failed, but still within the lease: keeps trying
    assert a.is_leader
    clocks.advance(1.8)
    assert not await a.renew()
    assert not a.is_leader and seen == [(True, 1), (False, 1)]

    flaky.down = False
    assert not await a.renew()  # once down, only a new acquisition makes it leader again


async def test_racing_replicas_for_a_free_lease_one_wins(kv):
    clocks = Clocks()
    replicas = [replica(kv, f"r{i}", clocks) for i in range(6)]
    won = await asyncio.gather(*(r.try_acquire() for r in replicas))
    assert sum(won) == 1
    winner = replicas[won.index(True)]
    assert (await stored(kv))[0].holder == winner.replica_id


async def test_a_release_lets_a_standby_take_over_at_once_and_keeps_the_term(kv):
    clocks = Clocks()
    a, b = replica(kv, "a", clocks), replica(kv, "b", clocks)
    assert await a.try_acquire()
    assert not await b.try_acquire()

    assert await a.release()

    assert not a.is_leader
    released, _ = await stored(kv)
    assert released.released and released.term == 1
    assert await b.try_acquire()  # no clock moved: the lease was handed over, not expired
    assert ((await stored(kv))[0].holder, b.term) == ("b", 2)


async def test_a_stale_holder_cannot_release_the_new_holder_s_lease(kv):
    a_clocks, b_clocks = Clocks(), Clocks()
    a, b = replica(kv, "a", a_clocks), replica(kv, "b", b_clocks)
    assert await a.try_acquire()
    b_clocks.advance(3.1)
    assert await b.try_acquire()

    assert not await a.release()

    lease, _ = await stored(kv)
    assert (lease.holder, lease.term, lease.released) == ("b", 2, False)


class RenewFirst:
    """b's handle on the bucket: before b's first write lands, a renews."""

    def __init__(self, kv, before_write) -> None:
        self.kv = kv
        self.before_write = before_write

    async def update(self, *args, **kwargs):
        if self.before_write is not None:
            hook, self.before_write = self.before_write, None
            await hook()
        return await self.kv.update(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.kv, name)


async def test_acquire_uses_compare_and_set_on_the_revision_it_read(kv):
    """The holder renews between the challenger's read and its write: the challenger must lose."""
    a_clocks, b_clocks = Clocks(), Clocks()
    a = replica(kv, "a", a_clocks)
    assert await a.try_acquire()
    _, revision = await stored(kv)
    b = replica(RenewFirst(kv, a.renew), "b", b_clocks)
    b_clocks.advance(3.1)  # b's clock says a's lease (as b reads it) has expired

    assert not await b.try_acquire()

    assert not b.is_leader and a.is_leader
    lease, new_revision = await stored(kv)
    assert (lease.holder, lease.term) == ("a", 1) and new_revision > revision


async def test_the_loop_takes_over_after_a_crash_and_at_once_after_a_release(kv):
    # crash: a short lease, so the standby's takeover after expiry is quick
    a = replica(kv, "a", lease=1.0)
    b = replica(kv, "b", lease=1.0)
    b_seen = changes(b)
    a.start()
    await eventually(lambda: a.is_leader, 30, "a leads")
    b.start()
    first, _ = await stored(kv)

    async def renewed_past_first_lease():
        lease, _ = await stored(kv)
        return lease.holder == "a" and lease.expires_at > first.expires_at + timedelta(seconds=1)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not await renewed_past_first_lease():
        assert loop.time() < deadline, "a never renewed past its first lease"
        await asyncio.sleep(0.05)
    assert not b.is_leader and b_seen == []  # b waited while a renewed

    # a crash: no release (cancelled until it ends: Python 3.11's wait_for can lose one cancel)
    await cancel_and_wait(a.task)
    await eventually(lambda: b.is_leader, 30, "b takes over after the lease expires")
    assert not a.is_leader and b.term == 2
    assert (await stored(kv))[0].holder == "b"
    await a.stop(release=True)  # nothing to release any more: must not touch b's lease
    assert (await stored(kv))[0].holder == "b"
    await b.stop(release=True)

    # release: a lease far longer than the deadline, so only the release can explain a takeover
    c = replica(kv, "c", lease=60.0, renew_seconds=1.0)
    d = replica(kv, "d", lease=60.0, renew_seconds=1.0)
    c.start()
    await eventually(lambda: c.is_leader, 30, "c leads")
    assert c.term == 3  # b released term 2: the term carries on
    d.start()
    await c.stop(release=True)
    await eventually(lambda: d.is_leader, 30, "d takes over the released lease")
    assert d.term == c.term + 1
    await d.stop(release=True)


def test_settings_default_to_a_third_of_the_lease_and_refuse_a_renewal_slower_than_it():
    settings = SchedulerSettings()
    assert settings.lease_seconds == 3.0 and settings.renew_seconds == pytest.approx(1.0)
    assert settings.replica_id
    with pytest.raises(ValueError, match="renew_seconds"):
        SchedulerSettings(lease_seconds=2, renew_seconds=2)
