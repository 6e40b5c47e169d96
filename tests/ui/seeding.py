"""Job records written straight into the jobs bucket: a table of any size in well under a second,
with the states, queues and labels a test needs (the listing reads the bucket, whoever wrote it)."""

from __future__ import annotations

import asyncio
import json
import pickle
import uuid
from datetime import timedelta
from pathlib import Path

from trainyard_contracts import JobRecord, JobSpec, JobState, lifecycle, new_job_id
from trainyard_contracts._time import utcnow
from trainyard_registry.mlflow_names import ModelRequest
from trainyard_registry.mlflow_store import MlflowModelStore
from trainyard_shared.jobstore import JobStore

STATES = [JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED]


def record(
    i: int, queue: str = "default", name: str | None = None, state: JobState | None = None
) -> JobRecord:
    """Job ``i``: one second older than job ``i + 1``, so the order is known; every 4th is in one
    of the four states, every 10th carries ``sweep=lr``."""
    spec = JobSpec(
        name=name or f"train-{i:04d}",
        queue=queue,
        command=["true"],
        labels={"sweep": "lr"} if i % 10 == 0 else {"sweep": "bs"},
    )
    at = utcnow() - timedelta(hours=2) + timedelta(seconds=i)
    fresh = lifecycle.new_record(new_job_id(), spec, at, "api")
    return fresh.model_copy(update={"state": state or STATES[i % 4], "updated_at": at})


async def seed(store: JobStore, records: list[JobRecord]) -> list[JobRecord]:
    for start in range(0, len(records), 200):
        await asyncio.gather(*(store.create(r) for r in records[start : start + 200]))
    return records


def model_version(store: MlflowModelStore, outputs: Path, name: str, queue: str, accuracy: float) -> int:
    """A version of ``name`` registered in MLflow as the registry registers a job's model."""
    out = outputs / uuid.uuid4().hex[:8]
    out.mkdir(parents=True)
    (out / "model.pkl").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    (out / "metrics.json").write_text(json.dumps({"accuracy": accuracy}))
    request = ModelRequest(
        job_id="job" + uuid.uuid4().hex[:12],
        attempt=1,
        queue=queue,
        job_name="train",
        model_name=name,
        outputs_dir=out,
        params={"lr": str(accuracy / 10)},
        git_repo="https://example.com/ml.git",
        git_commit=uuid.uuid4().hex + uuid.uuid4().hex[:8],
    )
    return store.register(request).version
