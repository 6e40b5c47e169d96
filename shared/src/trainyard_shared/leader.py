"""One active replica among a service's replicas: a lease in the KV ``leases`` bucket.

The scheduler's lease is the key ``scheduler``, the workflow service's schedule ticker's
``workflow-schedules``. The value is JSON::

    {"holder": "<replica id>", "term": 7, "expires_at": "2025-01-01T12:00:03Z", "released": false}

- **acquire**: ``kv.create`` when the key is absent (term 1); when the current lease has expired
  (its own ``expires_at`` against this replica's clock, or it was released), compare-and-set on
  the revision we read (``kv.update(..., last=revision)``) with ``term + 1``. Two replicas racing
  for it: one CAS wins, the other sees a wrong last sequence and stays standby.
- **renew**: compare-and-set on the revision of our own last write, every ``renew_seconds``
  (default a third of the lease). A wrong last sequence means someone took the lease: we step down
  at once. A renew that keeps failing for another reason (NATS unreachable) steps down as soon as
  our local validity runs out, which is before anyone else may take the lease over.
- **local validity**: the holder acts only while ``monotonic() < t_sent + lease * (1 - margin)``,
  where ``t_sent`` is when it sent the last successful write. A paused process (GC, SIGSTOP, a
  stuck event loop) wakes up no longer leader, whatever its renew task has or hasn't done yet. The
  margin (10 %) leaves room for clock drift between replicas, whose wall clocks decide expiry.
- **release** (graceful stop): compare-and-set our revision to a lease marked ``released`` that
  has already expired. A standby watching the key takes over at once with ``term + 1``. Released
  rather than deleted, so the term never goes back to 1 (a deleted key would lose it).

Being leader only decides who runs the planning loop and the reconciler; every assignment is
still a compare-and-set on the job record, so even two replicas that both believe they lead
(a paused old one, a new one) cannot assign the same attempt twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainyard_contracts._time import utcnow
from trainyard_shared.tasks import cancel_and_wait

log = logging.getLogger("trainyard.leader")

LEASE_KEY = "scheduler"
SAFETY_MARGIN = 0.1  # of a lease: the holder stops acting this much before others may take over

Listener = Callable[[bool, int], None]


class Lease(BaseModel):
    """The value of the lease key."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    holder: str
    term: int = Field(ge=1)
    expires_at: datetime
    released: bool = False

    def expired(self, now: datetime) -> bool:
        return self.released or now >= self.expires_at


class LeaderLease:
    """Contend for, hold, renew and release a lease (the scheduler's by default).

    ``run()`` (or ``start()``) is the loop; ``is_leader`` is what callers check before acting;
    listeners hear ``(leader, term)`` on every change. The single steps (``try_acquire``,
    ``renew``, ``release``) are public so tests can drive them against a real KV.
    """

    def __init__(
        self,
        kv: KeyValue,
        replica_id: str,
        *,
        lease_seconds: float = 3.0,
        renew_seconds: float | None = None,
        key: str = LEASE_KEY,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        renew = renew_seconds if renew_seconds is not None else lease_seconds / 3
        if not 0 < renew < lease_seconds:
            raise ValueError(f"renew_seconds ({renew}) must be positive and below lease_seconds")
        self.kv = kv
        self.replica_id = replica_id
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew
        self.key = key
        self.clock = clock
        self.monotonic = monotonic
        self.task: asyncio.Task[None] | None = None
        self._listeners: list[Listener] = []
        self._leader = False
        self._term = 0
        self._revision: int | None = None  # of our own last write, while we hold the lease
        self._valid_until = 0.0  # monotonic
        self._last_renew = 0.0  # monotonic time of the last successful write
        self._renew_failing = False
        self._other: Lease | None = None  # the lease someone else holds, as last read
        self._changed = asyncio.Event()  # the key changed (watch): look again now
        self._stopping = False

    # -- what others read -----------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True only while we hold the lease *and* its local validity has not run out."""
        return self._leader and self.monotonic() < self._valid_until

    @property
    def term(self) -> int:
        """The term of the lease we hold or last held (0: never held one)."""
        return self._term

    @property
    def holder(self) -> str | None:
        """Who holds the lease as far as this replica knows (None: unknown or free)."""
        if self._leader:
            return self.replica_id
        if self._other is not None and not self._other.expired(self.clock()):
            return self._other.holder
        return None

    def on_change(self, listener: Listener) -> None:
        """``listener(leader, term)`` runs on every change of this replica's leadership."""
        self._listeners.append(listener)

    async def read(self) -> tuple[Lease | None, int | None]:
        """The lease as stored now, and its revision (None, None when absent)."""
        try:
            entry = await self.kv.get(self.key)
        except KeyNotFoundError:  # absent, or a delete marker (KeyDeletedError is a subclass)
            return None, None
        if not entry.value:
            return None, entry.revision
        try:
            return Lease.model_validate_json(entry.value), entry.revision
        except ValidationError:
            log.error("unreadable lease: treating it as expired", extra={"key": self.key})
            return None, entry.revision

    # -- the single steps -----------------------------------------------------------------

    def _encode(self, term: int, now: datetime, *, released: bool = False) -> bytes:
        expires = now if released else now + timedelta(seconds=self.lease_seconds)
        lease = Lease(holder=self.replica_id, term=term, expires_at=expires, released=released)
        return lease.model_dump_json().encode()

    def _validity(self, sent: float) -> float:
        return sent + self.lease_seconds * (1 - SAFETY_MARGIN)

    async def try_acquire(self) -> bool:
        """Take the lease if it is absent or expired; False when someone else holds it."""
        if self._leader:
            return True
        sent, now = self.monotonic(), self.clock()
        current, revision = await self.read()
        if current is not None and not current.expired(now):
            self._other = current
            return False
        term = (current.term if current is not None else 0) + 1
        value = self._encode(term, now)
        try:
            if revision is None:
                new_revision = await self.kv.create(self.key, value)
            else:
                new_revision = await self.kv.update(self.key, value, last=revision)
        except KeyWrongLastSequenceError:
            return False  # another replica got there first
        self._revision = new_revision
        self._term = term
        self._valid_until = self._validity(sent)
        self._last_renew = sent
        self._renew_failing = False
        self._other = None
        self._set_leader(
            True,
            "acquired the lease",
            previous_holder=current.holder if current is not None else None,
            previous_term=current.term if current is not None else None,
            previous_released=current.released if current is not None else None,
        )
        return True

    async def renew(self) -> bool:
        """Extend our lease by compare-and-set on our own revision; False once we are not leader."""
        if not self._leader or self._revision is None:
            return False
        sent, now = self.monotonic(), self.clock()
        try:
            new_revision = await self.kv.update(self.key, self._encode(self._term, now), last=self._revision)
        except KeyWrongLastSequenceError:
            self._revision = None
            self._step_down("the lease was taken over (its revision moved)")
            return False
        except Exception as exc:  # unreachable NATS, timeouts: keep trying while still valid
            self._renew_failing = True
            if self.monotonic() >= self._valid_until:
                self._step_down(f"could not renew the lease for longer than it lasts: {exc!r}")
                return False
            log.warning(
                "lease renewal failed; retrying",
                extra={"replica": self.replica_id, "term": self._term, "error": repr(exc)},
            )
            return True
        self._revision = new_revision
        self._valid_until = self._validity(sent)
        self._last_renew = sent
        self._renew_failing = False
        return True

    async def release(self) -> bool:
        """Graceful stop: stop acting, then hand the lease back (CAS on our revision)."""
        revision, term = self._revision, self._term
        self._revision = None
        if self._leader:
            self._step_down("released the lease (stopping)")
        if revision is None:
            return False
        try:
            await self.kv.update(self.key, self._encode(term, self.clock(), released=True), last=revision)
        except Exception as exc:  # taken over meanwhile, or NATS gone: it expires by itself
            log.warning(
                "could not release the lease; it will expire",
                extra={"replica": self.replica_id, "term": term, "error": repr(exc)},
            )
            return False
        return True

    # -- the loop -------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self.run(), name=f"lease-{self.key}-{self.replica_id}")
        return self.task

    async def stop(self, release: bool = True) -> None:
        """Stop the loop and (by default) release the lease so a standby takes over at once."""
        self._stopping = True
        await cancel_and_wait(self.task)
        if release:
            await self.release()
        elif self._leader:
            self._step_down("stopped without releasing the lease")

    async def run(self) -> None:
        watcher = await self._watch()
        try:
            # ends on _stopping too: a cancel can be dropped by Python 3.11's wait_for when it
            # lands as a renewal's answer arrives, and the loop would then hold the lease on
            while not self._stopping:
                if self._leader:
                    await self._hold()
                else:
                    await self._contend()
        except asyncio.CancelledError:
            if not self._stopping:
                # cancelled from outside is what a crash looks like: stop acting, but keep our
                # hands off the lease (no release): the others must wait for it to expire
                self._revision = None
                if self._leader:
                    self._step_down("lease loop cancelled")
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watcher

    async def _hold(self) -> None:
        if self._renew_failing:
            delay = min(0.25, self.renew_seconds / 4)
        else:
            delay = max(0.0, self._last_renew + self.renew_seconds - self.monotonic())
        await asyncio.sleep(delay)
        remaining = self._valid_until - self.monotonic()
        if remaining <= 0:
            self._revision = None
            self._step_down("the lease ran out before it could be renewed")
            return
        try:
            # a renew that hangs must not keep us leader past our validity
            await asyncio.wait_for(self.renew(), remaining)
        except TimeoutError:
            self._revision = None
            self._step_down("renewing the lease took longer than the lease has left")

    async def _contend(self) -> None:
        self._changed.clear()
        try:
            if await self.try_acquire():
                return
        except Exception as exc:
            log.warning("could not read the lease", extra={"replica": self.replica_id, "error": repr(exc)})
        wait = self.renew_seconds  # poll at this pace even if the watch is quiet or broken
        if self._other is not None:
            until_expiry = (self._other.expires_at - self.clock()).total_seconds()
            wait = min(wait, max(0.0, until_expiry) + 0.01)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), wait)

    async def _watch(self) -> asyncio.Task[None] | None:
        """Wake the standby when the key changes (a release is then taken over at once)."""
        try:
            watcher = await self.kv.watch(self.key)
        except Exception as exc:
            log.warning("cannot watch the lease; polling only", extra={"error": repr(exc)})
            return None

        async def pump() -> None:
            try:
                async for _ in watcher:
                    self._changed.set()
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py: KeyWatcher.stop is unannotated

        return asyncio.create_task(pump(), name=f"lease-watch-{self.key}-{self.replica_id}")

    # -- state changes --------------------------------------------------------------------

    def _set_leader(self, leader: bool, why: str, **extra: object) -> None:
        self._leader = leader
        if not leader:
            self._valid_until = 0.0
        fields = {"lease": self.key, "replica": self.replica_id, "term": self._term, "reason": why, **extra}
        if leader:
            log.info("this replica now holds the lease", extra=fields)
        else:
            log.warning("this replica stepped down", extra=fields)
        for listener in self._listeners:
            try:
                listener(leader, self._term)
            except Exception:
                log.exception("leadership listener failed")

    def _step_down(self, why: str) -> None:
        if self._leader:
            self._set_leader(False, why)
