"""How a run record is cut to fit the bus: a head, and its child jobs in chunks. Pure, no I/O.

One record holding every child job of a 10,000-index array would be over a megabyte, past NATS'
max_payload. So the store keeps the run without its jobs as the **head**, and each step's jobs in
chunks of at most ``CHUNK_JOBS`` (by the index's position in the step's array). A chunk is never
changed in place: a change writes a new generation under a new key and the head names it, so the
compare-and-set of the head alone commits the whole change (a writer that loses the race leaves
only keys no head names, which it removes).
"""

from __future__ import annotations

import bisect
import secrets

from pydantic import BaseModel, ConfigDict, TypeAdapter

from trainyard_contracts.runs import ChildJob, PipelineRun, StepRun
from trainyard_workflow.core import indices_of

CHUNK_JOBS = 500
ChunkJobs = dict[int, ChildJob]
CHUNK_ADAPTER: TypeAdapter[ChunkJobs] = TypeAdapter(ChunkJobs)


class RunHead(BaseModel):
    """The head as stored: the run without its jobs, and the generation of each chunk
    (``<step>.<n>`` -> a token naming the key that holds it)."""

    model_config = ConfigDict(frozen=True)

    run: PipelineRun
    chunks: dict[str, str] = {}


def chunk_key(run_id: str, chunk: str, generation: str) -> str:
    return f"{run_id}.{chunk}.{generation}"


def new_generation() -> str:
    return secrets.token_hex(6)


def split(run: PipelineRun) -> tuple[PipelineRun, dict[str, ChunkJobs]]:
    """The run without its jobs, and its jobs per chunk name."""
    chunks: dict[str, ChunkJobs] = {}
    for spec in run.spec.steps:
        jobs = run.steps[spec.name].jobs
        if not jobs:
            continue
        indices = indices_of(spec)
        for index, job in jobs.items():
            position = bisect.bisect_left(indices, index)
            chunks.setdefault(f"{spec.name}.{position // CHUNK_JOBS}", {})[index] = job
    steps = {name: step.model_copy(update={"jobs": {}}) for name, step in run.steps.items()}
    return run.model_copy(update={"steps": steps}), chunks


def join(head: PipelineRun, chunks: dict[str, ChunkJobs]) -> PipelineRun:
    """The whole run from its head and its chunks."""
    jobs: dict[str, ChunkJobs] = {}
    for name, chunk in chunks.items():
        jobs.setdefault(name.rsplit(".", 1)[0], {}).update(chunk)
    steps: dict[str, StepRun] = {
        name: step.model_copy(update={"jobs": dict(sorted(jobs[name].items()))}) if name in jobs else step
        for name, step in head.steps.items()
    }
    return head.model_copy(update={"steps": steps})
