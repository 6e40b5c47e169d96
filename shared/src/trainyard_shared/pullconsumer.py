"""A durable consumer for the job path: messages pulled as they come, each handled on its own.

faststream runs its middleware chain (acknowledgement, logging, Prometheus, dead letters,
dependency injection) for every message, a large share of a consumer's CPU on the job path.
``batch_consumer`` pulls with nats-py (``Puller``, puller.py) and gives each message the
guarantees of a faststream durable consumer with ``NACK_ON_ERROR``, per message:

- a body that does not parse is dead-lettered at once with its reason and acked;
- a handler that raises is nacked for redelivery, until ``max_deliver``: then it is dead-lettered
  and acked, so the consumer moves on;
- a handler that raises because the bus could not answer for a moment (a leader election) is
  redelivered after a growing delay, not counted against ``max_deliver`` (redelivery.py);
- a handled message is acked on its own (a slow or failing neighbour does not hold it back);
- while a message waits or is handled it is kept ours with "in progress" every third of
  ``ack_wait``, so a long wait behind busy neighbours is not redelivered behind our back.

Up to ``concurrency`` handlers run at once (1: in order; with ``key``, one key's messages stay
in the order they were delivered, across everything pulled). Handlers must be idempotent, as for
any consumer here: what was delivered but not acked when a process dies is delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from faststream.nats import ConsumerConfig, JStream
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from prometheus_client import CollectorRegistry, Counter
from pydantic import ValidationError

from trainyard_shared.broker import ServiceBroker
from trainyard_shared.deadletter import DEFAULT_MAX_DELIVER, park, short_error
from trainyard_shared.metrics_labels import subject_shape
from trainyard_shared.puller import Puller, stream_sequence
from trainyard_shared.redelivery import FailureBudget
from trainyard_shared.tracing import tracing_enabled

log = logging.getLogger("trainyard.batches")

T = TypeVar("T")
INVALID = (ValidationError, UnicodeDecodeError, ValueError, RecursionError)

_counters: WeakKeyDictionary[CollectorRegistry, Counter] = WeakKeyDictionary()


def _outcomes(registry: CollectorRegistry) -> Counter:
    counter = _counters.get(registry)
    if counter is None:
        counter = _counters[registry] = Counter(
            "trainyard_messages",
            "messages handled by batch consumers, by consumer and outcome (handled, retried, dead_lettered)",
            ["consumer", "outcome"],
            registry=registry,
        )
    return counter


def batch_consumer(
    sb: ServiceBroker,
    subject: str,
    *,
    stream: JStream,
    durable: str,
    title: str,
    description: str,
    parse: Callable[[bytes], T],
    batch: int = 256,
    concurrency: int = 1,
    ack_wait: float = 30,
    max_deliver: int = DEFAULT_MAX_DELIVER,
    filter_subjects: Sequence[str] | None = None,
    with_message: bool = False,
    key: Callable[[Any], object] | None = None,
    linger: float = 0.0,
    max_ack_pending: int | None = None,
    deliver_new: bool = False,
) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Decorate ``async def handler(item)`` (or ``handler(item, raw_msg)`` with ``with_message``).

    ``batch``: how many messages may be ours at once (delivered, not yet acked); also the largest
    pull request. ``key``: with ``concurrency`` > 1, messages with the same key (a job id) are
    handled one after the other, in the order they were delivered; without it every message is
    its own lane. ``linger`` (seconds): for consumers off the job path (telemetry, the registry),
    messages are taken in gathered batches instead of one by one: the first one at once, then what
    came in each ``linger``, which costs both sides far less CPU per message at moderate rates.
    ``max_ack_pending``: the server's bound on messages delivered and not acked, over every
    replica (1: one at a time, in stream order, across replicas). ``deliver_new``: a consumer
    made now starts with what is stored from now on, not with the stream's history (one that
    exists keeps its place).
    """
    tracer = None
    if tracing_enabled():
        provider = sb.tracer_provider or trace.get_tracer_provider()
        tracer = provider.get_tracer("trainyard.batches")
    # the server's bound covers transient failures too; max_deliver bounds a message's own
    budget = FailureBudget(max_deliver)
    config = ConsumerConfig(max_deliver=budget.server_max_deliver, ack_wait=ack_wait)
    if max_ack_pending is not None:
        config.max_ack_pending = max_ack_pending
    if deliver_new:
        config.deliver_policy = DeliverPolicy.NEW
    if filter_subjects:
        config.filter_subjects = list(filter_subjects)

    def decorate(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        steps = _MessageSteps(sb, durable, handler, with_message, tracer, budget)
        handle, reject = steps.handle, steps.reject
        lanes = Lanes(handle, concurrency)
        unique = itertools.count()

        def lane_of(item: Any) -> object:
            # one lane per key: a key's messages in their order, lanes side by side
            if concurrency <= 1:
                return 0
            return key(item) if key else next(unique)

        def dispatch(raw: Msg, done: Callable[[], None]) -> None:
            try:
                item = parse(raw.data)
            except INVALID as exc:
                lanes.put(("invalid", next(unique)), raw, exc, done, reject)
                return
            lanes.put(lane_of(item), raw, item, done)

        sb.pullers.append(
            Puller(
                sb, subject, stream.name, durable, config, batch, dispatch, lanes, title, description, linger
            )
        )
        return handler

    return decorate


class _MessageSteps:
    """What becomes of one message: handled and acked, nacked for redelivery, or dead-lettered."""

    def __init__(
        self,
        sb: ServiceBroker,
        durable: str,
        handler: Callable[..., Awaitable[Any]],
        with_message: bool,
        tracer: trace.Tracer | None,
        budget: FailureBudget,
    ) -> None:
        self.sb, self.durable, self.handler, self.with_message = sb, durable, handler, with_message
        self.tracer, self.budget = tracer, budget
        outcomes = _outcomes(sb.registry)
        self.handled, self.retried, self.parked = (
            outcomes.labels(durable, o) for o in ("handled", "retried", "dead_lettered")
        )

    async def handle(self, raw: Msg, item: Any) -> None:
        try:
            with _traced(self.tracer, raw):
                await (self.handler(item, raw) if self.with_message else self.handler(item))
        except Exception as exc:
            await self.failed(raw, exc)
            return
        self.budget.forget(stream_sequence(raw))
        await raw.ack()
        self.handled.inc()

    async def failed(self, raw: Msg, exc: Exception) -> None:
        delivered = _delivered(raw)
        verdict = self.budget.judge(stream_sequence(raw), delivered, exc, short_error(exc))
        if verdict.park:
            await park(self.sb.broker, self.sb.subjects, self.sb.service, raw, verdict.reason)
            await raw.ack()
            self.parked.inc()
            return
        log.warning(
            "handler failed; the message will be redelivered",
            extra={
                "consumer": self.durable,
                "deliveries": delivered,
                "error": short_error(exc),
                "transient": verdict.transient,
                "delay": verdict.delay,
            },
        )
        await (raw.nak() if verdict.delay is None else raw.nak(delay=verdict.delay))
        self.retried.inc()

    async def reject(self, raw: Msg, exc: BaseException) -> None:
        await park(
            self.sb.broker, self.sb.subjects, self.sb.service, raw, f"invalid message: {short_error(exc)}"
        )
        await raw.ack()
        self.parked.inc()


Handle = Callable[[Msg, Any], Awaitable[None]]


class Lanes:
    """Messages handed over in delivery order, handled side by side up to ``concurrency``, one
    lane per key in order. One task per busy lane, not one per message."""

    def __init__(self, handle: Handle, concurrency: int) -> None:
        self._handle = handle
        self._limit = asyncio.Semaphore(max(1, concurrency))
        self._lanes: dict[object, deque[tuple[Msg, Any, Callable[[], None], Handle]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def put(
        self, lane: object, raw: Msg, item: Any, done: Callable[[], None], handle: Handle | None = None
    ) -> None:
        queued = self._lanes.get(lane)
        entry = (raw, item, done, handle or self._handle)
        if queued is not None:
            queued.append(entry)
            return
        self._lanes[lane] = deque((entry,))
        task = asyncio.create_task(self._run(lane))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, lane: object) -> None:
        queued = self._lanes[lane]
        try:
            while queued:
                raw, item, done, handle = queued[0]
                try:
                    async with self._limit:
                        await handle(raw, item)
                except Exception:  # handle() deals with each message; this is a bug, not a bad message
                    log.exception("message handling failed", extra={"subject": raw.subject})
                finally:
                    queued.popleft()
                    done()
        finally:
            del self._lanes[lane]

    async def wait(self, timeout: float) -> None:
        """Until every message handed over so far is handled (or ``timeout``)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


@contextlib.contextmanager
def _traced(tracer: trace.Tracer | None, raw: Msg) -> Any:
    """The publisher's trace, continued (only when spans are exported: see tracing.py)."""
    if tracer is None:
        yield
        return
    token = otel_context.attach(propagate.extract(dict(raw.headers or {})))
    try:
        with tracer.start_as_current_span(f"{subject_shape(raw.subject)} process"):
            yield
    finally:
        otel_context.detach(token)


def _delivered(raw: Msg) -> int:
    try:
        return int(raw.metadata.num_delivered)
    except Exception:
        return 1
