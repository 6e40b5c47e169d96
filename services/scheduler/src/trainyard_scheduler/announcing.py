"""How the scheduler announces a change it wrote: events and commands, in order, owed until confirmed."""

from __future__ import annotations

import logging

from trainyard_contracts import (
    Capacity,
    JobFailed,
    JobQueued,
    JobRecord,
    JobScheduled,
    JobState,
    JobSubmitted,
    lifecycle,
)
from trainyard_contracts.commands import Rendezvous
from trainyard_scheduler.parts import SchedulerParts
from trainyard_scheduler.startcommand import start_command, unsendable_reason
from trainyard_scheduler.unconfirmed import PUBLISH_ERRORS
from trainyard_shared.publishing import Outgoing
from trainyard_shared.tracing import job_trace

log = logging.getLogger("trainyard.scheduler")
# well inside the jobs stream's duplicate window (120 s): a younger submitted-event copy is
# dropped by the stream if the submission service's one is there already
SUBMITTED_COPY_UNCHECKED_SECONDS = 60.0
# a message's headers count against the server's max_payload too (nats-py checks the body only)
HEADERS_ROOM = 4096


class Announcing(SchedulerParts):
    """The publishing half of ``SchedulerCore``: a write's followers learn of it from here."""

    async def _publish(self, job_id: str, sends: list[Outgoing]) -> bool:
        """Publish one change's events and commands in order. A failure is the job's own: the
        batch is owed and retried promptly (``retry_unconfirmed``), the caller goes on."""
        try:
            await self.events.publish_in_order(sends)
        except PUBLISH_ERRORS as exc:
            log.warning(
                "could not announce a job's change; retrying with backoff",
                extra={"job_id": job_id, "error": type(exc).__name__},
            )
            self.unconfirmed.owe(job_id, sends)
            return False
        return True

    async def retry_unconfirmed(self) -> int:
        """Publish again what earlier changes still owe (due ones only); how many were confirmed."""
        return await self.unconfirmed.retry(lambda sends: self.events.publish_in_order(sends))

    async def _queued_events(self, record: JobRecord) -> list[Outgoing]:
        """The job's queued event, its submitted event first (see ``_submitted_first``)."""
        queued = JobQueued(job_id=record.job_id, attempt=record.attempt, queue=record.spec.queue)
        return [*await self._submitted_first(record), self.events.outgoing(queued)]

    async def _submitted_first(self, record: JobRecord) -> list[Outgoing]:
        """The job's submitted event, to publish just before its queued one.

        The planner follows the jobs bucket, so it can queue a job before the submission service
        has published that job's submitted event (it writes the record first): followers would see
        queued before submitted. So the scheduler publishes the same event itself, rebuilt from the
        record under the same message id; the stream keeps whichever copy comes first and drops
        the other. This also gives a job whose submitted event was never confirmed (submission
        timed out after writing the record) its event. Past the stream's duplicate window the
        copy would no longer be dropped: an old record is checked against the stream first."""
        submitted = JobSubmitted(
            job_id=record.job_id,
            spec=record.spec.redacted(),
            submitted_by=record.submitted_by,
            time=record.submitted_at,
            traceparent=record.traceparent,
        )
        age = (self.clock() - record.submitted_at).total_seconds()
        if age > SUBMITTED_COPY_UNCHECKED_SECONDS and await self._has_event(submitted):
            return []
        return [self.events.outgoing(submitted)]

    async def _has_event(self, event: JobSubmitted) -> bool:
        return await self.events.has_event(event.subject(self.events.subjects))

    async def _announce_scheduled(self, record: JobRecord, *, queued: bool = False) -> None:
        """The scheduled event (after the queued one, when this write also queued the job) and the
        start command(s): one per member of a split gang, each with its ranks and the rendezvous
        from the record, so a re-send is the same command (the exec stream drops the same message
        id; the executor starts its ranks once by compare-and-set).

        All are published together and their acks awaited together (``publish_in_order``)."""
        assert record.executor_id is not None
        r = record.spec.resources
        gang = record.split_gang() if record.gang is not None else None
        sends: list[Outgoing] = []
        # the record travels with its start command: the executor's first write needs no read
        revision = self._revision_of(record)
        carried = {"record": record, "record_revision": revision} if revision else {}
        with job_trace(record.traceparent):
            if queued:
                sends.extend(await self._queued_events(record))
            if record.state == JobState.SCHEDULED:
                sends.append(
                    self.events.outgoing(
                        JobScheduled(
                            job_id=record.job_id,
                            attempt=record.attempt,
                            executor_id=record.executor_id,
                            resources=Capacity(cpu=r.cpu, memory=r.memory, gpu=r.gpu),
                            executors=[m.executor_id for m in gang.members] if gang is not None else [],
                        )
                    )
                )
            # one start per executor: the whole job on one, or each member of a split gang with
            # its ranks (a member that started or ended already gets none)
            starts: list[tuple[str, Rendezvous | None]] = (
                [(record.executor_id, None)]
                if gang is None
                else [
                    (
                        member.executor_id,
                        Rendezvous(
                            master_addr=gang.master_addr,
                            master_port=gang.master_port,
                            world_size=gang.world_size,
                            ranks=member.ranks,
                        ),
                    )
                    for member in gang.members
                    if member.started_at is None and member.state is None
                ]
            )
            room = self.events.max_payload() - HEADERS_ROOM
            for executor_id, rendezvous in starts:
                gpus = record.gpu_devices(record.attempt, executor_id)
                start = start_command(self.commands, record, executor_id, rendezvous, carried, room, gpus)
                if start is None:  # can never be sent: the job fails, the pass goes on
                    sends.extend(await self._fail_unsendable(record, room))
                    break
                sends.append(start)
            await self._publish(record.job_id, sends)

    async def _fail_unsendable(self, record: JobRecord, room: int) -> list[Outgoing]:
        """scheduled -> failed (compare-and-set on this attempt) for a job whose start command
        cannot fit in a message; its failed event, or nothing if the record moved on."""
        reason = unsendable_reason(record, room)
        attempt, now = record.attempt, self.clock()
        result = await self.store.update(
            record.job_id,
            lambda r: (
                lifecycle.finish(r, JobState.FAILED, now, exit_code=None, reason=reason)
                if r.state == JobState.SCHEDULED and r.attempt == attempt
                else None
            ),
        )
        if result is None:
            return []
        log.error("a job's start command cannot be sent; failed it", extra={"job_id": record.job_id})
        failed = JobFailed(
            job_id=record.job_id, attempt=attempt, executor_id=record.executor_id, reason=reason
        )
        return [self.events.outgoing(failed)]

    def _revision_of(self, record: JobRecord) -> int | None:
        """The KV revision of exactly this record object, if this scheduler wrote or saw it: the
        copy its store wrote or read last (JobStore.remembered), the one it trusts first
        (JobStore.known), or the one its view holds (a store that does not read through the view).
        The store's own copy first: the view's watch often delivers the write before the write's
        acknowledgement, and then the view holds an equal record parsed from the watch, not this
        object (the start went without its record, and the executor read the key)."""
        for known in (self.store.remembered(record.job_id), self.store.known(record.job_id)):
            if known is not None and known[0] is record:
                return known[1]
        if self.view.get(record.job_id) is record:
            return self.view.revisions.get(record.job_id)
        return None
