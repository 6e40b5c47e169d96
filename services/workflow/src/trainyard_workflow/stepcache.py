"""The step cache: ``cache: true`` steps reuse an earlier success of the same rendered spec with the
same inputs, by the same submitter into the same queue (Flyte's and Kubeflow Pipelines' step caching).

The key (:func:`cache_key`) is the sha256 of canonical JSON of what makes a step's result: its job
spec as it would be submitted (parameters and ``${{ steps.X.outputs.Y }}`` filled in; not the
run's own labels, nor a source credential), its array, the run's submitter and the job's queue (a
team never reuses another's result), and each dependency's state and, for one that succeeded, what
its jobs hand on (:func:`job_identity`). The entry (:class:`CacheEntry`) names the jobs that ran;
a hit reuses them (their records hold the outputs later steps read), so nothing is submitted.

``StepCacheStore`` keeps the entries in the workflow service's own KV bucket
(``<prefix>_step_cache``: bounded in entries and bytes, oldest out first, each entry kept
``STEP_CACHE_TTL_DAYS``). ``StepCache`` is how the workflow service uses them: a look that finds
an entry only while its jobs can still be reused, and a success remembered.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field

from trainyard_contracts import JobRecord, JobSpec, JobState
from trainyard_contracts._time import utcnow
from trainyard_contracts.runs import ChildJob, PipelineRun
from trainyard_contracts.stepoutputs import OutputValue

log = logging.getLogger("trainyard.workflow")
KEY_VERSION = 1  # a change of what goes into the key: every earlier entry misses


def cache_key(
    *,
    owner: str | None,
    job: JobSpec,
    array: str | None,
    inputs: Mapping[str, Any],
) -> str:
    """The step cache's key of a step (hex sha256). ``owner``: the run's submitter (a team's
    name, the admin, ``schedule:<name>``); ``job``: the step's job as it is submitted, outputs
    filled in; ``inputs``: per dependency, its state and its jobs' identities."""
    document = {
        "v": KEY_VERSION,
        "owner": owner,
        "queue": job.queue,
        "array": array,
        # every field with its default too: a default that changes is a different spec
        "job": job.model_dump(mode="json", exclude={"source": {"credential"}}),
        "inputs": inputs,
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def job_identity(outputs: Mapping[str, OutputValue] | None) -> dict[str, Any]:
    """What one upstream job hands on, as it goes into a dependent's key: the outputs its
    dependents see (outputs.json's values, the model version it registered)."""
    return {"outputs": dict(outputs) if outputs else None}


class CacheEntry(BaseModel):
    """A step's success, remembered: the run, step and attempt that ran it, and its jobs (every
    one succeeded), by array index."""

    model_config = ConfigDict(frozen=True)

    key: str = Field(pattern=r"^[0-9a-f]{64}$")
    run_id: str
    step: str
    attempt: int = Field(ge=1)
    jobs: dict[int, ChildJob]
    outputs: dict[str, OutputValue] | None = Field(None, description="a single job's outputs, for the record")
    created: datetime = Field(default_factory=utcnow)


class StepCacheStore:
    """The entries in their KV bucket, by key. A write is a put (two entries for one key are
    interchangeable: the same spec, inputs and owner succeeded); removing one that no longer
    holds (its job record gone) is a compare-and-set on the revision read, so an entry written
    meanwhile is never removed."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def get(self, key: str) -> tuple[CacheEntry, int] | None:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.revision is None:
            return None
        try:
            return CacheEntry.model_validate_json(entry.value), entry.revision
        except ValueError:  # an entry of another version: a miss, replaced by the next success
            return None

    async def remember(self, entry: CacheEntry) -> None:
        await self.kv.put(entry.key, entry.model_dump_json().encode())

    async def forget(self, key: str, revision: int) -> None:
        try:
            await self.kv.delete(key, last=revision)
        except KeyWrongLastSequenceError:
            pass  # written again since: that entry stays


class StepCache:
    """The step cache as the workflow service uses it: a look under a step's key finds an entry
    only while the jobs it names can still be reused, and a step that ran and succeeded is
    remembered. ``store`` None: every look misses and nothing is remembered."""

    def __init__(
        self,
        store: StepCacheStore | None,
        read_job: Callable[[str], Awaitable[JobRecord | None]],
        blob_stored: Callable[[str], Awaitable[bool]] | None,
    ) -> None:
        self.store, self.read_job, self.blob_stored = store, read_job, blob_stored

    async def look(self, key: str) -> CacheEntry | None:
        """The entry under ``key`` whose jobs' records still say succeeded; None for any other
        answer (a cache that cannot be read too: the step runs). An entry whose jobs are gone is
        removed with them."""
        if self.store is None:
            return None
        try:
            found = await self.store.get(key)
            if found is not None and await self.still_there(found[0]):
                return found[0]
            if found is not None:
                await self.store.forget(key, found[1])
        except Exception as exc:
            log.warning("the step cache not read: the step runs", extra={"key": key, "error": repr(exc)})
        return None

    async def still_there(self, entry: CacheEntry) -> bool:
        """Whether every job a cache entry names still has its record, succeeded (the records
        hold the outputs later steps read), and its outputs folder, if it packed one, is still
        stored (its dependents' $TRAINYARD_INPUTS: a blob is kept from its first put, not from
        the job that found it there)."""
        jobs = list(entry.jobs.values())
        if not jobs or any(job.job_id is None or job.outcome != "succeeded" for job in jobs):
            return False
        records = await asyncio.gather(*(self.read_job(job.job_id or "") for job in jobs))
        if not all(r is not None and r.state == JobState.SUCCEEDED for r in records):
            return False
        digests = sorted({job.outputs_digest for job in jobs if job.outputs_digest})
        if not digests:
            return True
        if self.blob_stored is None:
            return False
        return all(await asyncio.gather(*(self.blob_stored(d) for d in digests)))

    async def remember(self, run: PipelineRun, name: str) -> None:
        """A ``cache: true`` step that ran and succeeded: its jobs under its key (a hit, or a
        step that never looked, is not remembered). Lost in a crash, the next success writes it."""
        step = run.steps[name]
        if self.store is None or step.cache is None or step.cache.state != "miss" or not step.cache.key:
            return
        try:
            single = step.jobs.get(0) if not run.spec.step(name).array else None
            record = await self.read_job(single.job_id) if single is not None and single.job_id else None
            entry = CacheEntry(
                key=step.cache.key,
                run_id=run.run_id,
                step=name,
                attempt=step.attempt,
                jobs=step.jobs,
                outputs=record.outputs if record is not None else None,
            )
            await self.store.remember(entry)
        except Exception as exc:
            log.warning(
                "a step's success not remembered",
                extra={"run_id": run.run_id, "step": name, "error": repr(exc)},
            )
