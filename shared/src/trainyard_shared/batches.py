"""A durable consumer for the job path: messages pulled in batches, each handled on its own.

faststream runs its middleware chain (acknowledgement, logging, Prometheus, dead letters,
dependency injection) for every message: measured at roughly half of a consumer's CPU on the job
path. ``batch_consumer`` pulls up to ``batch`` messages in one fetch with nats-py (see ``Puller``)
and gives each message the same guarantees ``durable_consumer`` gives it, per message:

- a body that does not parse is dead-lettered at once with its reason and acked;
- a handler that raises is nacked for redelivery, until ``max_deliver``: then it is dead-lettered
  and acked, so the consumer moves on;
- a handled message is acked on its own (a slow or failing neighbour does not hold it back);
- while handlers run, unfinished messages are kept ours with "in progress" every third of
  ``ack_wait``, so a long batch is not redelivered behind our back.

Up to ``concurrency`` handlers run at once (1: in order; with ``key``, one key's messages stay
in order). Handlers must be idempotent, as for any
consumer here: a batch interrupted by a crash is redelivered whole, minus what was acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from faststream.nats import ConsumerConfig, JStream
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from prometheus_client import CollectorRegistry, Counter
from pydantic import ValidationError

from trainyard_shared.broker import ServiceBroker
from trainyard_shared.deadletter import DEFAULT_MAX_DELIVER, park
from trainyard_shared.metrics_labels import subject_shape
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
) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Decorate ``async def handler(item)`` (or ``handler(item, raw_msg)`` with ``with_message``).

    ``key``: with ``concurrency`` > 1, messages with the same key (a job id) are handled one after
    the other, in the order they were delivered; without it every message is its own lane.
    """
    service = sb.service
    outcomes = _outcomes(sb.registry)
    handled, retried, parked = (outcomes.labels(durable, o) for o in ("handled", "retried", "dead_lettered"))
    tracer = None
    if tracing_enabled():
        provider = sb.tracer_provider or trace.get_tracer_provider()
        tracer = provider.get_tracer("trainyard.batches")
    config = ConsumerConfig(max_deliver=max_deliver, ack_wait=ack_wait)
    if filter_subjects:
        config.filter_subjects = list(filter_subjects)

    def decorate(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def handle(raw: Msg, item: Any) -> None:
            try:
                with _traced(tracer, raw):
                    await (handler(item, raw) if with_message else handler(item))
            except Exception as exc:
                delivered = _delivered(raw)
                if delivered < max_deliver:
                    log.warning(
                        "handler failed; the message will be redelivered",
                        extra={"consumer": durable, "deliveries": delivered, "error": _short(exc)},
                    )
                    await raw.nak()
                    retried.inc()
                    return
                reason = f"failed {delivered} times, last: {_short(exc)}"
                await park(sb.broker, sb.subjects, service, raw, reason)
                await raw.ack()
                parked.inc()
                return
            await raw.ack()
            handled.inc()

        async def in_order(pairs: list[tuple[Msg, Any]]) -> None:
            for raw, item in pairs:
                await handle(raw, item)

        async def on_batch(raws: list[Msg]) -> None:
            keep = asyncio.create_task(_keep_in_progress(raws, ack_wait / 3))
            try:
                lanes: dict[object, list[tuple[Msg, Any]]] = {}
                for n, raw in enumerate(raws):
                    try:
                        item = parse(raw.data)
                    except INVALID as exc:
                        await park(sb.broker, sb.subjects, service, raw, f"invalid message: {_short(exc)}")
                        await raw.ack()
                        parked.inc()
                        continue
                    # one lane per key: a key's messages in their order, lanes side by side
                    lane = 0 if concurrency <= 1 else (key(item) if key else n)
                    lanes.setdefault(lane, []).append((raw, item))
                if len(lanes) <= 1:
                    for pairs in lanes.values():
                        await in_order(pairs)
                else:
                    limit = asyncio.Semaphore(concurrency)

                    async def bounded(pairs: list[tuple[Msg, Any]]) -> None:
                        async with limit:
                            await in_order(pairs)

                    await asyncio.gather(*(bounded(pairs) for pairs in lanes.values()))
            finally:
                keep.cancel()

        sb.pullers.append(
            Puller(sb, subject, stream.name, durable, config, batch, on_batch, title, description)
        )
        return handler

    return decorate


class Puller:
    """The fetch loop of one durable pull consumer: one fetch at a time, which answers as soon as
    any message is there (up to ``batch``), then the whole batch is handled before the next.

    Not faststream's batch subscriber: that one keeps fetching until the batch is full or its
    timeout has passed, so a lone message waited up to the timeout, and its many short fetches
    left messages delivered but unhandled until ``ack_wait`` (seen in tests). Started after the
    broker, stopped before it (``runner.build_app`` and the submission app's lifespan do both).
    """

    LONG_POLL = 1.0  # seconds a fetch waits when nothing is there: an idle consumer asks once a second

    def __init__(
        self,
        sb: ServiceBroker,
        subject: str,
        stream: str,
        durable: str,
        config: ConsumerConfig,
        batch: int,
        on_batch: Callable[[list[Msg]], Awaitable[None]],
        title: str,
        description: str,
    ) -> None:
        self.sb, self.subject, self.stream, self.durable = sb, subject, stream, durable
        self.config, self.batch, self.on_batch = config, batch, on_batch
        self.title, self.description = title, description
        self._task: asyncio.Task[None] | None = None
        self._fetching = False
        self._stopping = False

    async def start(self) -> None:
        js = self.sb.broker.config.connection_state.stream
        self._sub = await js.pull_subscribe(
            self.subject, durable=self.durable, stream=self.stream, config=self.config
        )
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"pull-{self.durable}")

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop fetching; a batch being handled is finished first (within ``timeout``)."""
        self._stopping = True
        task, self._task = self._task, None
        if task is None:
            return
        if self._fetching:
            task.cancel()  # what a cancelled fetch held is redelivered after ack_wait
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, timeout)
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()

    async def _run(self) -> None:
        while not self._stopping:
            self._fetching = True
            try:
                raws = await self._sub.fetch(self.batch, timeout=self.LONG_POLL)
            except (TimeoutError, NatsTimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnecting, or the consumer is being recreated
                log.warning(
                    "fetch failed; trying again", extra={"consumer": self.durable, "error": _short(exc)}
                )
                await asyncio.sleep(1.0)
                continue
            finally:
                self._fetching = False
            try:
                await self.on_batch(raws)
            except Exception:  # on_batch handles each message; this is a bug, not a bad message
                log.exception("batch handling failed", extra={"consumer": self.durable})


async def _keep_in_progress(raws: list[Msg], every: float) -> None:
    while True:
        await asyncio.sleep(every)
        for raw in raws:
            if not raw._ackd:  # nats-py's own flag: acked, nacked or terminated
                with contextlib.suppress(Exception):
                    await raw.in_progress()


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


def _short(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    return f"{type(exc).__name__}: {text[:1500]}"
