"""The submission use cases: submit, cancel, read. Collaborators come in; no HTTP, no handlers."""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from nats.errors import Error as NatsError
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from opentelemetry import trace
from pydantic import ValidationError

from trainyard_contracts import (
    FieldError,
    JobCancelRequested,
    JobRecord,
    JobRejected,
    JobSpec,
    JobSubmitted,
    ModelVersionRecord,
    SpecError,
    is_job_id,
    lifecycle,
    new_job_id,
    parse_spec,
)
from trainyard_contracts._time import utcnow
from trainyard_contracts.admission import signed
from trainyard_contracts.jobsecrets import split_secrets
from trainyard_shared.executors import ExecutorDirectory
from trainyard_shared.gitpolicy import GitPolicy, GitSettings
from trainyard_shared.jobindex import IndexQuery, JobIndex, to_ns
from trainyard_shared.jobsecrets import SecretStore
from trainyard_shared.jobstore import JobStore, RecordExists
from trainyard_shared.publishing import EventPublisher
from trainyard_shared.tracing import current_traceparent
from trainyard_submission.access import check_submit, place_spec
from trainyard_submission.fitcheck import unfittable
from trainyard_submission.joblist import BucketReader, LatestValues, NewestMatches
from trainyard_submission.queuestore import QueueStore, builtin
from trainyard_submission.samespec import IdempotencyConflict, spec_differences
from trainyard_submission.sources import with_resolved_source
from trainyard_submission.tokens import Principal
from trainyard_submission.workdirs import WorkdirStore

TRACER = trace.get_tracer("trainyard.submission")
log = logging.getLogger("trainyard.submission")


class JobNotFound(LookupError):
    pass


class JobAlreadyFinished(RuntimeError):
    pass


@dataclass(frozen=True)
class Submitted:
    job_id: str
    record: JobRecord
    duplicate: bool


class SubmissionService:
    def __init__(
        self,
        store: JobStore,
        jobs_reader: BucketReader,
        models_reader: BucketReader,
        idempotency: KeyValue,
        models: KeyValue,
        events: EventPublisher,
        git_timeout: float,
        secrets: SecretStore,
        clock: Callable[[], datetime] = utcnow,
        queues: QueueStore | None = None,
        git_policy: GitPolicy | None = None,
        workdirs: WorkdirStore | None = None,
        executors: ExecutorDirectory | None = None,
        admission_key: bytes | None = None,
        index: JobIndex | None = None,
    ) -> None:
        self.store = store
        self.jobs_reader = jobs_reader
        self.models_reader = models_reader
        self.idempotency = idempotency
        self.models_kv = models
        self.events = events
        self.git_timeout = git_timeout
        self.clock = clock
        self.queues = queues
        # read once: the installation's rule on which repositories may be fetched (gitpolicy.py)
        self.git_policy = git_policy or GitSettings().policy()
        self.workdirs = workdirs
        # the online executors' capacities: a spec none of them could ever hold is refused (fitcheck.py)
        self.executors = executors
        # a job's secret values go here, not into its record (jobsecrets.py)
        self.secrets = secrets
        # what it admits is signed; the scheduler places only what verifies (admission.py)
        self.admission_key = admission_key
        # the jobs index the listings read (jobindex.py); without it a listing reads the bucket
        self.index = index

    async def submit(
        self,
        document: str | bytes,
        submitted_by: str | None,
        idempotency_slot: str | None = None,
        principal: Principal | None = None,
    ) -> Submitted:
        """Validate, admit into the queue, resolve the source, create the record, announce it.

        Raises SpecError (ShellRefused when the queue does not take ``shell: true``), Forbidden, or
        IdempotencyConflict when the slot already holds a job with a different spec.
        """
        spec = await self.admissible(document, principal)
        job_id = new_job_id()
        if idempotency_slot is not None:
            try:
                await self.idempotency.create(idempotency_slot, job_id.encode())
            except KeyWrongLastSequenceError:
                entry = await self.idempotency.get(idempotency_slot)
                job_id = (entry.value or b"").decode()
                found = await self.store.get(job_id)
                if found is not None:
                    differs = spec_differences(spec, found[0].spec)
                    if differs:
                        raise IdempotencyConflict(job_id, differs) from None
                    return Submitted(job_id, found[0], duplicate=True)
                # claimed by a request that died before creating the record: finish its work
        spec = await with_resolved_source(spec, self.git_timeout, self.git_policy)
        stored_spec, secrets = split_secrets(spec)
        with TRACER.start_as_current_span("trainyard.job", attributes={"trainyard.job_id": job_id}):
            if secrets is not None:  # first: a record that says they are stored finds them
                await self.secrets.put(job_id, secrets)
            record = lifecycle.new_record(job_id, stored_spec, self.clock(), submitted_by).model_copy(
                update={
                    "traceparent": current_traceparent(),
                    "secrets_stored": secrets is not None,
                    "idempotency_slot": idempotency_slot,
                }
            )
            if self.admission_key is not None:
                record = signed(record, self.admission_key)
            try:
                await self.store.create(record)
            except RecordExists:
                found = await self.store.get(job_id)
                assert found is not None
                return Submitted(job_id, found[0], duplicate=True)
            # neither the record nor the event holds a secret value (the record: since jobsecrets)
            try:
                await self.events.emit(
                    JobSubmitted(job_id=job_id, spec=spec.redacted(), submitted_by=submitted_by)
                )
            except (TimeoutError, NatsError) as exc:
                # the job exists: the scheduler's reconciler queues a record left in submitted
                # (submitted_grace_seconds), so the caller is told it was accepted, not an error
                # that would make it submit the same job again
                log.warning(
                    "submitted event not confirmed; the reconciler will queue the job",
                    extra={"job_id": job_id, "error": type(exc).__name__},
                )
        return Submitted(job_id, record, duplicate=False)

    async def admissible(self, document: str | bytes, principal: Principal | None) -> JobSpec:
        """The spec as it would be stored, after every check a submission passes before it is
        (the dry run runs the same ones, so it never says "would start" where a submit is refused).

        Raises SpecError, ShellRefused or Forbidden."""
        spec = place_spec(principal, parse_spec(document))
        queue = await self.queues.require(spec.queue) if self.queues else builtin(spec.queue)
        check_submit(principal, spec, queue)
        await self.check_fits(spec)
        if spec.workdir is not None:
            if self.workdirs is None:
                raise SpecError([FieldError(field="workdir", message="this installation stores no workdirs")])
            await self.workdirs.check_spec(spec)
        return spec

    async def check_fits(self, spec: JobSpec) -> None:
        """Raise SpecError when no online executor could ever hold one replica of ``spec``."""
        if self.executors is None:
            return
        online = await self.executors.online(self.clock())
        errors = unfittable(spec, (beat.capacity for beat in online.values()))
        if errors:
            raise SpecError(errors)

    async def reject(self, errors: list[FieldError], intake_id: str | None) -> str:
        job_id = new_job_id()
        await self.events.emit(JobRejected(job_id=job_id, errors=errors, intake_id=intake_id))
        return job_id

    async def cancel(self, job_id: str, by: str | None) -> JobRecord:
        if not is_job_id(job_id):
            raise JobNotFound(job_id)
        result = await self.store.update(
            job_id,
            lambda r: (
                None
                if r.state.terminal or r.cancel_requested
                else r.model_copy(update={"cancel_requested": True, "updated_at": self.clock()})
            ),
        )
        if result is not None:
            record = result[1]
        else:
            found = await self.store.get(job_id)
            if found is None:
                raise JobNotFound(job_id)
            record = found[0]
            if record.state.terminal:
                raise JobAlreadyFinished(f"job {job_id} already ended: {record.state.value}")
        await self.events.emit(JobCancelRequested(job_id=job_id, attempt=record.attempt, by=by))
        return record

    async def get(self, job_id: str) -> JobRecord:
        if not is_job_id(job_id):  # not a key the bucket could hold (the bucket would refuse it)
            raise JobNotFound(job_id)
        found = await self.store.get(job_id)
        if found is None:
            raise JobNotFound(job_id)
        return found[0]

    async def list(
        self,
        state: str | None,
        queue: str | None,
        limit: int,
        timeout: float = 30.0,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        oldest_first: bool = False,
        past: tuple[datetime, str] | None = None,
    ) -> list[JobRecord]:
        """The newest ``limit`` records in ``state``, ``queue`` and ``name`` (None: any) that carry
        every one of ``labels``, newest first (``oldest_first``: the oldest, oldest first), after
        the page boundary ``past`` (``submitted_at``, job id) when one is given.

        Reads the jobs index (jobindex.py): a page reads the index entries of its queue and state
        near its boundary, then its rows' records by key. Without an index it reads the whole
        bucket (joblist.py).
        """
        if self.index is not None:
            query = IndexQuery(
                queue,
                state,
                name,
                dict(labels or {}),
                limit,
                oldest_first,
                (to_ns(past[0]), past[1]) if past is not None else None,
            )
            async with asyncio.timeout(timeout):
                return await self.index.page(query, self._record_or_none)
        wanted = NewestMatches(state, queue, limit, name, labels, oldest_first=oldest_first, past=past)
        matches = await self.jobs_reader.read(wanted, timeout)
        return matches.records()

    async def _record_or_none(self, job_id: str) -> JobRecord | None:
        try:
            found = await self.store.get(job_id)
        except ValidationError:
            return None
        return found[0] if found is not None else None

    async def all_records(self) -> builtins.list[JobRecord]:
        """Every record in the bucket (one read of all of it: the index's first build)."""
        records = []
        for key, (value, _) in (await self.jobs_reader.read(LatestValues(), timeout=600.0)).values.items():
            try:
                records.append(JobRecord.model_validate_json(value))
            except ValidationError:
                log.error("unreadable job record", extra={"job_id": key})
        return records

    async def models(self, name: str | None) -> builtins.list[ModelVersionRecord]:
        # one ordered read; nats-py's kv.keys() can answer "no keys" when its consumer
        # delivered before it counted
        versions = []
        for key, (value, _) in (await self.models_reader.read(LatestValues())).values.items():
            if name is None or key.startswith(f"{name}."):
                versions.append(ModelVersionRecord.model_validate_json(value))
        versions.sort(key=lambda v: (v.created_at, v.name, v.version), reverse=True)
        return versions
