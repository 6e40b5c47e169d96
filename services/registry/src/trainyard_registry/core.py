"""Registering a succeeded job's model: MLflow first, then the models bucket, the record, events.

Each step is idempotent, so a redelivered "succeeded" event finishes what a crash interrupted and
never makes a second model version.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

from faststream.nats import NatsBroker
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from trainyard_contracts import (
    ExecutorHeartbeat,
    JobRecord,
    JobSucceeded,
    ModelRegistered,
    ModelVersionRecord,
    Subjects,
)
from trainyard_contracts.sweeps import SWEEP_LABEL, TRIAL_LABEL
from trainyard_contracts.workflow import RUN_LABEL, STEP_LABEL
from trainyard_registry.deferred import ModelStore
from trainyard_registry.mlflow_names import (
    BACKEND_TAG,
    EXECUTOR_TAG,
    IMAGE_DIGEST_TAG,
    IMAGE_TAG,
    PIPELINE_RUN_TAG,
    PIPELINE_STEP_TAG,
    RUNTIME_LOCK_TAG,
    SWEEP_TAG,
    SWEEP_TRIAL_TAG,
    ModelRequest,
    RegisteredModel,
)
from trainyard_shared.jobstore import JobStore
from trainyard_shared.publishing import MSG_ID, EventPublisher

log = logging.getLogger("trainyard.registry")


def path_from_uri(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", ""):
        raise ValueError(f"outputs at {uri!r}: only file:// outputs are readable by this registry")
    return Path(unquote(parsed.path))


def version_record(record: JobRecord, model: RegisteredModel) -> ModelVersionRecord:
    source = record.spec.source
    return ModelVersionRecord(
        name=model.name,
        version=model.version,
        job_id=record.job_id,
        attempt=record.attempt,
        run_id=model.run_id,
        model_id=model.model_id,
        source=model.source,
        git_repo=source.repo if source else None,
        git_commit=model.git_commit,
        metrics=model.metrics,
        params={k: str(v) for k, v in record.spec.params.items()},
        queue=record.spec.queue,
    )


class RegistryCore:
    def __init__(
        self,
        store: JobStore,
        models_kv: KeyValue,
        events: EventPublisher,
        broker: NatsBroker,
        subjects: Subjects,
        mlflow: ModelStore,
        experiment: str,
        executors: KeyValue | None = None,
    ) -> None:
        self.store = store
        self.models_kv = models_kv
        self.events = events
        self.broker = broker
        self.subjects = subjects
        self.mlflow = mlflow
        self.experiment = experiment
        self.executors = executors

    async def on_succeeded(self, event: JobSucceeded) -> ModelVersionRecord | None:
        if event.declares_model is False:
            return None  # most jobs: nothing to register, and no record to read to know it
        found = await self.store.get(event.job_id)
        if found is None:
            return None
        record, _ = found
        outputs = record.spec.outputs
        if outputs is None or outputs.model is None:
            return None
        uri = event.outputs_uri or record.outputs_uri
        if not uri:
            raise ValueError(f"job {record.job_id} succeeded without an outputs location")
        source, workdir = record.spec.source, record.spec.workdir
        request = ModelRequest(
            job_id=record.job_id,
            attempt=event.attempt,
            queue=record.spec.queue,
            job_name=record.spec.name,
            model_name=outputs.model,
            outputs_dir=path_from_uri(uri),
            params=dict(record.spec.params),
            git_repo=source.repo if source else None,
            git_commit=source.commit if source else (workdir.commit if workdir else None),
            experiment=self.experiment,
            outputs_path=outputs.path,
            workdir_digest=workdir.digest if workdir else None,
            workdir_diff=workdir.diff if workdir else None,
            lineage=await self._lineage(record, event),
        )
        # MLflow's client is synchronous: keep it off the event loop
        registered = await asyncio.to_thread(self.mlflow.register, request)
        version = version_record(record, registered)
        await self.models_kv.put(version.key, version.model_dump_json().encode())
        ref = version.ref()
        await self.store.update(
            record.job_id, lambda r: r.model_copy(update={"model": ref}) if r.model != ref else None
        )
        registered_event = ModelRegistered(
            job_id=record.job_id,
            attempt=event.attempt,
            model_name=ref.name,
            **ref.model_dump(exclude={"name"}),
            # the same announcement on every delivery: a redelivered or replayed succeeded event
            # repeats it with the same id, so readers that deduplicate by id count it once
            event_id=uuid.uuid5(
                uuid.NAMESPACE_URL, f"trainyard:{record.job_id}:{event.attempt}:model_registered"
            ).hex,
        )
        await self.events.emit(registered_event)
        await self.broker.publish(
            version.model_dump_json().encode(),
            self.subjects.model_registered(version.name),
            headers={MSG_ID: f"{version.name}:{version.version}:registered"},
            stream=self.subjects.streams.models,
        )
        log.info(
            "model registered",
            extra={"job_id": record.job_id, "model": version.name, "version": version.version},
        )
        return version

    async def _lineage(self, record: JobRecord, event: JobSucceeded) -> dict[str, str]:
        """What made the version, as tags: the labels the workflow service set, the executor that
        ran the attempt and its backend, the image."""
        tags = lineage_of(record.spec.labels)
        attempt = next((a for a in record.attempts if a.number == event.attempt), None)
        executor_id = event.executor_id or (attempt.executor_id if attempt else None)
        if executor_id:
            tags[EXECUTOR_TAG] = executor_id
            backend = await self._backend_of(executor_id)
            if backend:
                tags[BACKEND_TAG] = backend
        if record.spec.image:
            tags[IMAGE_TAG] = record.spec.image
        runtime = attempt.runtime if attempt else None  # as its executor reported it
        if runtime is not None and runtime.image_digest:
            tags[IMAGE_DIGEST_TAG] = runtime.image_digest
        if runtime is not None and runtime.runtime_lock:
            tags[RUNTIME_LOCK_TAG] = runtime.runtime_lock
        return tags

    async def _backend_of(self, executor_id: str) -> str | None:
        """The executor's backend from its heartbeat (None once it is gone: not recorded)."""
        if self.executors is None:
            return None
        try:
            entry = await self.executors.get(executor_id)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        try:
            return ExecutorHeartbeat.model_validate_json(entry.value).backend
        except ValidationError:
            return None


# labels the workflow service puts on the jobs it submits (a pipeline's steps; a sweep's trials,
# with the run and step of a sweep that is a step) -> the version's tags
LINEAGE_TAGS = {
    SWEEP_LABEL: SWEEP_TAG,
    TRIAL_LABEL: SWEEP_TRIAL_TAG,
    RUN_LABEL: PIPELINE_RUN_TAG,
    STEP_LABEL: PIPELINE_STEP_TAG,
}


def lineage_of(labels: dict[str, str]) -> dict[str, str]:
    """The tags saying what made a job: the pipeline run and step, the sweep and trial it was
    (docs/workflows.md, "Sweeps")."""
    return {tag: labels[label] for label, tag in LINEAGE_TAGS.items() if label in labels}
