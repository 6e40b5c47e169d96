"""Submissions through the bus intake, as other systems submit (submission/intake.py), on the
workflow service's own subject.

Each job is published on ``<prefix>.intake.workflow`` (only the workflow's NATS user may publish
there, so no other sender can submit under one of its keys first) with its idempotency key as
``Nats-Msg-Id``
and an inbox of ours in ``Trainyard-Reply-To``. The submission service maps the key to its job for
good: the same key sent again (after a restart, or a lost reply) is answered with the same job and
``duplicate: true``, never a second job.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nats.errors import TimeoutError as NatsTimeout

from trainyard_contracts import IntakeReply, JobSpec
from trainyard_contracts.spec import spec_to_json

REPLY_HEADER = "Trainyard-Reply-To"
TOKEN_HEADER = "Trainyard-Token"
# the intake stream's duplicate window (shared/bus.py): an ack "duplicate" means the same key reached
# the stream less than this long ago and was not stored, so nothing answers it: send it again after
DUPLICATE_WINDOW = 0.1


class IntakeSender:
    def __init__(
        self,
        nc: Any,
        js: Any,
        subject: str,
        *,
        timeout: float = 30.0,
        concurrency: int = 64,
        token: str | None = None,
    ) -> None:
        self.nc, self.js, self.subject = nc, js, subject
        self.timeout, self.token = timeout, token
        self._slots = asyncio.Semaphore(concurrency)
        self._in_flight: dict[str, asyncio.Task[IntakeReply]] = {}

    async def submit(self, spec: JobSpec, key: str) -> IntakeReply:
        """The intake's answer for ``spec`` under ``key``; TimeoutError when none came in time
        (sending the same key again later is safe). A key already on its way is not sent again:
        the caller waits for that send's answer (the outcomes of one run's steps, handled side by
        side, each send the run's unanswered submissions; a second send of a key inside the intake
        stream's duplicate window is refused as a duplicate and retried until the window passed)."""
        sending = self._in_flight.get(key)
        if sending is None:
            sending = asyncio.ensure_future(self._submit(spec, key))
            self._in_flight[key] = sending
            sending.add_done_callback(lambda done: self._forget(key, done))
        # one caller giving up (cancelled) does not cancel the send the others wait for
        return await asyncio.shield(sending)

    def _forget(self, key: str, done: asyncio.Task[IntakeReply]) -> None:
        if self._in_flight.get(key) is done:
            del self._in_flight[key]
        if not done.cancelled():
            done.exception()  # retrieved: a failed send nobody waits for any more is not logged

    async def _submit(self, spec: JobSpec, key: str) -> IntakeReply:
        async with self._slots, asyncio.timeout(self.timeout):
            inbox = self.nc.new_inbox()
            replies = await self.nc.subscribe(inbox, max_msgs=1)
            try:
                headers = {"Nats-Msg-Id": key, REPLY_HEADER: inbox}
                if self.token:
                    headers[TOKEN_HEADER] = self.token
                await self._publish_stored(spec_to_json(spec).encode(), headers)
                msg = await replies.next_msg(timeout=None)
            finally:
                await replies.unsubscribe()
        return IntakeReply.model_validate_json(msg.data)

    async def _publish_stored(self, body: bytes, headers: dict[str, str]) -> None:
        while True:
            try:
                ack = await self.js.publish(self.subject, body, headers=dict(headers))
            except NatsTimeout:
                continue  # stored or not, the same key is safe to send again
            if not ack.duplicate:
                return
            await asyncio.sleep(DUPLICATE_WINDOW)
