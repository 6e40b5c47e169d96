"""Pulling a durable consumer's messages from the server, continuously (``Puller``).

What the server is asked and when: the consumer made (or brought to our subjects and bound on
deliveries), a waiting pull request for the room left, the server's heartbeats and abnormal ends
(409/503) watched, a consumer deleted under us created again where we were, what is ours kept "in
progress". What becomes of each message once delivered (handled, acked, nacked, dead-lettered, in
which lane) is :mod:`trainyard_shared.pullconsumer`'s, which hands every message to
``dispatch``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from faststream.nats import ConsumerConfig
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy, RetentionPolicy
from nats.js.errors import NotFoundError

from trainyard_shared.broker import ServiceBroker
from trainyard_shared.deadletter import short_error
from trainyard_shared.natshandle import NatsHandle

if TYPE_CHECKING:
    from trainyard_shared.pullconsumer import Lanes

log = logging.getLogger("trainyard.batches")


class Puller:
    """One durable pull consumer, pulled continuously: a pull request waits on the server and
    each message comes as soon as it is stored, with no round trip per message or per batch.

    At most ``batch`` messages are ours at once (delivered, not yet finished); a new request asks
    for the room that is left, once at least a quarter of ``batch`` is free (or nothing is ours).
    The server's idle heartbeat on the waiting request tells a live request from one lost with a
    server restart: after ``LOST_AFTER`` without a message or a heartbeat, a new request is sent.

    Not faststream's batch subscriber (it kept fetching until the batch was full or 0.5 s had
    passed) nor nats-py's ``fetch`` (a request, and often a second one, per batch: at low rates,
    per message). Started after the broker, stopped before it (``runner.build_app`` and the
    submission app's lifespan do both).
    """

    HEARTBEAT = 1.0  # seconds between the server's heartbeats while a request waits
    EXPIRES = 15.0  # a waiting request's life; then the server answers 408 and another is sent
    LOST_AFTER = 3.5  # seconds without a message or a heartbeat: the request died with a server
    FIRST_PAUSE = 0.1  # after a request the server ended abnormally (409, 503): then doubled
    MOST_PAUSE = 5.0

    def __init__(
        self,
        sb: ServiceBroker,
        subject: str,
        stream: str,
        durable: str,
        config: ConsumerConfig,
        batch: int,
        dispatch: Callable[[Msg, Callable[[], None]], None],
        lanes: Lanes,
        title: str,
        description: str,
        linger: float = 0.0,
    ) -> None:
        self.sb, self.subject, self.stream, self.durable = sb, subject, stream, durable
        self.config, self.batch, self.title, self.description = config, max(1, batch), title, description
        self._dispatch, self._lanes = dispatch, lanes
        self._min_request = max(1, self.batch // 4)
        self._task: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._sub: Any = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._requested = 0  # asked for by the waiting request and not yet delivered
        self._asked = self._got = 0  # the last request: how many it asked for and brought
        self._waited = False  # the last request waited for messages (not "no wait")
        self.linger = linger
        self._last_heard = 0.0
        self._ours: dict[int, Msg] = {}  # delivered, not finished
        self._abnormal_streak = 0  # requests in a row the server ended with 409/503
        self._abnormal_end = False  # the last request so ended: pause before the next one
        self._consumer_gone = False  # the server said the consumer does not exist
        self._last_msg: Msg | None = None  # the last delivered: where a re-created consumer resumes

    # -- life ------------------------------------------------------------------------------------

    async def start(self) -> None:
        nc = NatsHandle(self.sb.broker).client
        await self._ensure_consumer()
        self._stopping = False
        self._inbox = nc.new_inbox()
        self._sub = await nc.subscribe(self._inbox, cb=self._on_message)
        self._task = asyncio.create_task(self._run(), name=f"pull-{self.durable}")
        ack_wait = float(self.config.ack_wait or 30)
        self._keeper = asyncio.create_task(self._keep_in_progress(ack_wait / 3), name=f"keep-{self.durable}")

    async def stop(self, timeout: float = 30.0) -> None:
        """Ask for nothing more and stop listening, then finish what was delivered (within
        ``timeout``). The server drops a waiting pull request once its inbox has no listener, so
        what is stored after the stop stays for the next consumer (``test_batches.py``); only a
        message already on the wire at that moment is delivered again after ``ack_wait``."""
        self._stopping = True
        self._wake.set()
        # every wait here is bounded: a service's shutdown must never hang on its consumers
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=5)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._sub.unsubscribe(), 5)
            self._sub = None
        await self._lanes.wait(timeout)
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            await asyncio.wait({keeper}, timeout=5)

    async def _ensure_consumer(self, resume_at: int | None = None) -> None:
        """Create the durable consumer unless it exists. An existing one keeps its config (as
        nats-py's ``pull_subscribe`` does), except the subjects it takes: a release that narrows
        or widens them updates the consumer, which keeps its place in the stream. ``resume_at``:
        a consumer created again starts at that stream sequence, not at the stream's start."""
        js = NatsHandle(self.sb.broker).jetstream
        config = dataclasses.replace(self.config, durable_name=self.durable, name=self.durable)
        if not config.filter_subjects:
            config.filter_subject = self.subject
        try:
            info = await js.consumer_info(self.stream, self.durable)
        except NotFoundError:
            if resume_at is not None and not await _is_work_queue(js, self.stream):
                # (a work queue holds only what no consumer acked: it is delivered from its start)
                config.deliver_policy, config.opt_start_seq = DeliverPolicy.BY_START_SEQUENCE, resume_at
            await js.add_consumer(self.stream, config=config)
            return
        if _subjects_of(info.config) != _subjects_of(config):
            current = dataclasses.replace(
                info.config, filter_subject=config.filter_subject, filter_subjects=config.filter_subjects
            )
            await js.add_consumer(self.stream, config=current)  # the same name: an update
            log.warning(
                "consumer's subjects updated",
                extra={"consumer": self.durable, "subjects": sorted(_subjects_of(config))},
            )
            info.config = current
        await self._bound_deliveries(info.config)

    async def _bound_deliveries(self, current: ConsumerConfig) -> None:
        """A consumer made by an earlier release with a lower bound on deliveries gets ours: the
        server would stop delivering a message still waiting out an election (redelivery.py)."""
        if current.max_deliver == self.config.max_deliver:
            return
        js = NatsHandle(self.sb.broker).jetstream
        await js.add_consumer(
            self.stream, config=dataclasses.replace(current, max_deliver=self.config.max_deliver)
        )
        log.warning(
            "consumer's bound on deliveries updated",
            extra={"consumer": self.durable, "max_deliver": self.config.max_deliver},
        )

    # -- pulling -----------------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        pause = 0.0
        while not self._stopping:
            if pause:
                await asyncio.sleep(pause)
                pause = 0.0
            if self._abnormal_end and self._requested == 0:
                await self._after_abnormal_end()
                continue
            room = self.batch - len(self._ours)
            if self._requested == 0 and room > 0 and (room >= self._min_request or not self._ours):
                try:
                    await self._next_request(room)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # reconnecting: ask again shortly
                    log.warning("pull request failed; asking again", extra=self._extra(exc))
                    pause = 1.0
                    continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.HEARTBEAT)
            if self._requested and loop.time() - self._last_heard > self.LOST_AFTER:
                # no message and no heartbeat: the request was lost (a server restart); the
                # consumer may have gone with the server's state too
                self._requested = 0
                with contextlib.suppress(Exception):
                    await self._ensure_consumer(self._resume_at())

    async def _next_request(self, room: int) -> None:
        """Without ``linger``: a waiting request for the room left (each message comes as soon as
        it is stored). With ``linger``: wait for one message, then every ``linger`` seconds take
        what has gathered in one answer (no wait), as long as messages keep coming; a full answer
        is followed at once, an empty one goes back to waiting."""
        if not self.linger:
            await self._request(room)
            return
        asked, got, waited = self._asked, self._got, self._waited
        if asked == 0 or (not waited and got == 0):
            await self._request(1)  # nothing gathering: wait for the next message
            return
        if waited or got < asked:
            await asyncio.sleep(self.linger)  # let the next ones gather (telemetry, registry)
            if self._stopping:
                return
            room = self.batch - len(self._ours)
        await self._request(room, wait=False)

    async def _request(self, count: int, *, wait: bool = True) -> None:
        nc = NatsHandle(self.sb.broker).client
        body: dict[str, object] = {"batch": count}
        if wait:
            body["expires"] = int(self.EXPIRES * 1e9)
            body["idle_heartbeat"] = int(self.HEARTBEAT * 1e9)
        else:
            body["no_wait"] = True  # (the server would wait after all if expires were given)
        self._requested = self._asked = count
        self._got, self._waited = 0, wait
        self._last_heard = asyncio.get_running_loop().time()
        await nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.durable}",
            json.dumps(body).encode(),
            reply=self._inbox,
        )

    async def _on_message(self, raw: Msg) -> None:
        self._last_heard = asyncio.get_running_loop().time()
        status = raw.headers.get("Status") if raw.headers else None
        if status is not None:
            if status == "100":
                self._abnormal_streak = 0
                return  # the waiting request is alive
            # 408: the request expired; 409: the server ended it (max waiting, consumer deleted,
            # leadership change); 503: no consumer: in every case, the request is over
            if status != "408":
                self._note_abnormal_end(status, (raw.headers or {}).get("Description"))
            self._requested = 0
            self._wake.set()
            return
        if self._stopping:
            return  # not ours to start any more: delivered again after ack_wait
        self._requested = max(0, self._requested - 1)
        self._got += 1
        self._abnormal_streak = 0
        self._last_msg = raw
        key = id(raw)
        self._ours[key] = raw

        def done() -> None:
            self._ours.pop(key, None)
            if self._requested == 0:
                self._wake.set()

        self._dispatch(raw, done)
        if self._requested == 0:
            self._wake.set()

    # -- a request the server ended: back off, and re-create a consumer that is gone --------------

    def _note_abnormal_end(self, status: str, detail: str | None) -> None:
        """409 (consumer deleted, too many waiting requests, leadership change) or 503 (no
        consumer answers): asking again at once would spin, so :meth:`_after_abnormal_end` waits
        first; a consumer deleted under us (by anyone allowed to) is created again."""
        self._abnormal_streak += 1
        self._abnormal_end = True
        gone = status == "503" or "consumer deleted" in (detail or "").lower()
        self._consumer_gone = self._consumer_gone or gone
        if self._abnormal_streak == 1:  # once per run of them, not once per request
            # 404 "No Messages" is routine polling of an idle stream: DEBUG, not a warning
            log.log(
                logging.DEBUG if status == "404" else logging.WARNING,
                "pull request ended by the server",
                extra={"consumer": self.durable, "status": status, "detail": detail},
            )

    async def _after_abnormal_end(self) -> None:
        """Wait (doubling from ``FIRST_PAUSE`` to ``MOST_PAUSE`` while the ends keep coming), then
        create the consumer again if the server said it is gone; the next request goes out after."""
        loop = asyncio.get_running_loop()
        pause = min(self.MOST_PAUSE, self.FIRST_PAUSE * 2 ** min(max(0, self._abnormal_streak - 1), 16))
        deadline = loop.time() + pause
        while not self._stopping and (left := deadline - loop.time()) > 0:
            self._wake.clear()  # set by stop(), and by handlers finishing (then wait on)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)
        if self._stopping:
            return
        if self._consumer_gone:
            try:
                await self._ensure_consumer(self._resume_at())
            except Exception as exc:  # the server may be restarting: tried again after a pause
                log.warning("could not create the consumer again", extra=self._extra(exc))
                self._abnormal_streak += 1
                return
            self._consumer_gone = False
            log.warning("consumer created again", extra={"consumer": self.durable, "stream": self.stream})
        self._abnormal_end = False

    def _resume_at(self) -> int | None:
        """Where a consumer created again starts: at the oldest message still ours (its ack went
        to the deleted consumer, so it comes again; handlers are idempotent), else just after the
        last one delivered; None (the stream's start) when nothing was ever delivered. A message
        the deleted consumer held for a later redelivery (nacked, not yet delivered again) is lost
        with it: the server kept that state in the consumer alone."""
        sequences = [stream_sequence(m) for m in self._ours.values()]
        if sequences and None not in sequences:
            return min(s for s in sequences if s is not None)
        last = stream_sequence(self._last_msg) if self._last_msg is not None else None
        return None if last is None else last + 1

    async def _keep_in_progress(self, every: float) -> None:
        # ends on the stop flag too: a cancel alone can be lost on Python 3.11 (see stop())
        while not self._stopping:
            await asyncio.sleep(every)
            for raw in list(self._ours.values()):
                if not raw._ackd:  # nats-py's own flag: acked, nacked or terminated
                    with contextlib.suppress(Exception):
                        await raw.in_progress()

    def _extra(self, exc: BaseException) -> dict[str, str]:
        return {"consumer": self.durable, "error": short_error(exc)}


def _subjects_of(config: ConsumerConfig) -> frozenset[str]:
    return frozenset(config.filter_subjects or ([config.filter_subject] if config.filter_subject else []))


async def _is_work_queue(js: Any, stream: str) -> bool:
    info = await js.stream_info(stream)
    return bool(info.config.retention == RetentionPolicy.WORK_QUEUE)


def stream_sequence(raw: Msg) -> int | None:
    try:
        return int(raw.metadata.sequence.stream)
    except Exception:
        return None
