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
``STEP_CACHE_TTL_DAYS``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field

from trainyard_contracts import JobSpec
from trainyard_contracts._time import utcnow
from trainyard_contracts.runs import ChildJob
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
