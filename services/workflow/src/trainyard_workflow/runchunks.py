"""How a run record is cut to fit the bus: a head, and its child jobs in chunks. Pure, no I/O.

One record holding every child job of a 10,000-index array would be over a megabyte, past NATS'
max_payload. So the store keeps the run without its jobs as the **head**, and each step's jobs in
chunks of at most ``CHUNK_JOBS`` (by the index's position in the step's array). A chunk is never
changed in place: a change writes a new generation under a new key and the head names it, so the
compare-and-set of the head alone commits the whole change (a writer that loses the race leaves
only keys no head names, which it removes).

The run's pipeline spec is not in the head: it never changes, so it is written once, under its own
key (``<run_id>.spec``), and the head names it (``head_bytes``/``parse_head``). A head written
before that holds the whole spec inline (``RunHead``'s JSON) and still reads.
"""

from __future__ import annotations

import bisect
import json
import secrets
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, create_model

from trainyard_contracts.runs import ChildJob, PipelineRun, StepRun
from trainyard_contracts.workflow import PipelineSpec
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


# the run as its head holds it: every field of PipelineRun but the spec (jobs are in the chunks)
RunWithoutSpec: type[BaseModel] = create_model(
    "RunWithoutSpec",
    __config__=ConfigDict(frozen=True),
    **{name: (f.annotation, f) for name, f in PipelineRun.model_fields.items() if name != "spec"},  # type: ignore[call-overload]
)
CHUNK_NAMES: TypeAdapter[dict[str, str]] = TypeAdapter(dict[str, str])


def spec_key(run_id: str) -> str:
    """The key of a run's pipeline spec, written once when the run is created."""
    return f"{run_id}.spec"


def head_bytes(head: RunHead) -> bytes:
    """The head as stored: the key of its spec, its chunks, the run without spec and jobs."""
    run = head.run.model_dump_json(exclude={"spec"})
    chunks = json.dumps(head.chunks, separators=(",", ":"))
    return f'{{"spec":{json.dumps(spec_key(head.run.run_id))},"chunks":{chunks},"run":{run}}}'.encode()


def spec_named(value: bytes) -> str | None:
    """The spec key a stored head names; None for a head written with its spec inline."""
    start = len(b'{"spec":"')
    if not value.startswith(b'{"spec":"'):
        return None
    # head_bytes writes it first; a run id (and so its spec key) holds no quote or escape
    return value[start : value.index(b'"', start)].decode()


def parse_head(value: bytes, spec: PipelineSpec) -> RunHead:
    """A head as stored by ``head_bytes``, with its run's ``spec`` (read from its own key)."""
    raw: dict[str, Any] = json.loads(value)
    fields = RunWithoutSpec.model_validate(raw["run"])
    # the fields are validated above and the spec when it was read: nothing is validated twice
    run = PipelineRun.model_construct(spec=spec, **dict(fields))
    return RunHead(run=run, chunks=CHUNK_NAMES.validate_python(raw["chunks"]))


def chunk_key(run_id: str, chunk: str, generation: str) -> str:
    return f"{run_id}.{chunk}.{generation}"


def new_generation() -> str:
    return secrets.token_hex(6)


def split(
    run: PipelineRun, like: tuple[PipelineRun, PipelineRun, dict[str, ChunkJobs]] | None = None
) -> tuple[PipelineRun, dict[str, ChunkJobs]]:
    """The run without its jobs, and its jobs per chunk name. ``like``: a run this one was changed
    from, with its own split (head, chunks): a step that is the very object it was there is taken
    from that split as it is (a turn changes a few of a 500-step DAG's steps, not all)."""
    before, before_head, before_chunks = like if like is not None else (None, None, {})
    kept: dict[str, dict[str, ChunkJobs]] = {}
    for name, jobs in before_chunks.items():
        kept.setdefault(name.rsplit(".", 1)[0], {})[name] = jobs
    specs = {spec.name: spec for spec in run.spec.steps}
    chunks: dict[str, ChunkJobs] = {}
    steps: dict[str, StepRun] = {}
    for name, step in run.steps.items():
        if before is not None and before_head is not None and before.steps.get(name) is step:
            steps[name] = before_head.steps[name]
            chunks.update(kept.get(name, {}))
            continue
        steps[name] = step.model_copy(update={"jobs": {}})
        spec = specs.get(name)
        if not step.jobs or spec is None:
            continue
        indices = indices_of(spec)
        for index, job in step.jobs.items():
            position = bisect.bisect_left(indices, index)
            chunks.setdefault(f"{name}.{position // CHUNK_JOBS}", {})[index] = job
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
