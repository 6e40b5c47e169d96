"""Pipeline runs in their KV bucket: created once, every change a compare-and-set of the head.

A run is stored as a head (``<run_id>``) and its child jobs in chunks (``<run_id>.<step>.<n>.<gen>``,
runchunks.py), so that a 10,000-index array fits NATS' max_payload. A change writes new chunk
generations first, then the head naming them with a compare-and-set: the head is the commit.

A chunk's key is written once (a new generation for every change), so its value, once read or
written, is kept (``ChunkCache``): reading a run is its head and the chunks another writer changed
since, not one get per step of a 500-step DAG on every turn.

The run's pipeline spec is written once, under its own key, when the run is created (runchunks.py,
``spec_key``): a head carries the steps' states only (a 500-step DAG's head: 39 KB, not 287 KB
written and read on every turn). A head written before that, with the spec inline, still reads;
its first change writes the spec's key, then a head in the new form.

A change sets against the run this store wrote or read last (its revision), without reading the
head first; only when that compare-and-set fails (another writer's head came since) is the head
read and the change made again. The compare-and-set is the commit either way: a stale copy costs
a failed try, never a change lost or applied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from trainyard_contracts.runs import PipelineRun
from trainyard_contracts.workflow import PipelineSpec
from trainyard_workflow.named_store import listed_keys
from trainyard_workflow.runchunks import (
    CHUNK_ADAPTER,
    ChunkJobs,
    RunHead,
    chunk_key,
    head_bytes,
    join,
    new_generation,
    parse_head,
    spec_key,
    spec_named,
    split,
)

T = TypeVar("T")
MAX_LISTED = 1000


class RunNotFound(LookupError):
    pass


class RunConflict(RuntimeError):
    """The run kept changing under us; the caller's message is redelivered."""


@dataclass(frozen=True)
class Stored:
    """A run as read: whole, its head, the chunks the head names, the head's revision."""

    run: PipelineRun
    head: RunHead
    chunks: dict[str, ChunkJobs]
    revision: int
    spec_stored: bool = True  # False: a head from before the spec had its own key


class ChunkCache:
    """Chunks by key, the least recently used dropped past ``max_jobs`` jobs in all. Safe to keep
    across writers and replicas: a key is never written twice, so what it held it holds."""

    def __init__(self, max_jobs: int = 50_000) -> None:
        self.max_jobs = max_jobs
        self._chunks: OrderedDict[str, ChunkJobs] = OrderedDict()
        self._jobs = 0

    def get(self, key: str) -> ChunkJobs | None:
        chunk = self._chunks.get(key)
        if chunk is not None:
            self._chunks.move_to_end(key)
        return chunk

    def put(self, key: str, chunk: ChunkJobs) -> None:
        self.drop(key)
        self._chunks[key] = chunk
        self._jobs += len(chunk)
        while self._jobs > self.max_jobs and self._chunks:
            _, oldest = self._chunks.popitem(last=False)
            self._jobs -= len(oldest)

    def drop(self, key: str) -> None:
        chunk = self._chunks.pop(key, None)
        if chunk is not None:
            self._jobs -= len(chunk)

    def __len__(self) -> int:
        return len(self._chunks)


class RunStore:
    def __init__(
        self, kv: KeyValue, cache: ChunkCache | None = None, max_heads: int = 256, max_written: int = 16
    ) -> None:
        self.kv = kv
        self.cache = cache if cache is not None else ChunkCache()
        # a head as parsed, by run and revision: a revision's value never changes, and parsing a
        # head validates its whole pipeline (the DAG, every output reference) again
        self._heads: OrderedDict[str, tuple[int, RunHead]] = OrderedDict()
        self.max_heads = max_heads
        # the runs this store wrote last, whole, by run: a read that finds the head at the revision
        # written returns it as it was (rebuilding it from head and chunks was 500 model_copys
        # of a 500-step DAG on every turn); few, as one may hold 10,000 jobs
        self._written: OrderedDict[str, Stored] = OrderedDict()
        self.max_written = max_written
        # a run's spec by its key: written once, never changed
        self._specs: OrderedDict[str, PipelineSpec] = OrderedDict()

    async def _parsed_head(self, run_id: str, revision: int, value: bytes) -> RunHead:
        kept = self._heads.get(run_id)
        if kept is not None and kept[0] == revision:
            self._heads.move_to_end(run_id)
            return kept[1]
        named = spec_named(value)
        if named is None:  # written before the spec had its own key: the spec inline
            head = RunHead.model_validate_json(value)
        else:
            head = parse_head(value, await self._spec(named))
        self._keep_head(run_id, revision, head)
        return head

    async def _spec(self, key: str) -> PipelineSpec:
        spec = self._specs.get(key)
        if spec is None:
            entry = await self.kv.get(key)  # written before any head that names it
            spec = PipelineSpec.model_validate_json(entry.value or b"")
            self._keep_spec(key, spec)
        self._specs.move_to_end(key)
        return spec

    def _keep_spec(self, key: str, spec: PipelineSpec) -> None:
        self._specs[key] = spec
        while len(self._specs) > self.max_heads:
            self._specs.popitem(last=False)

    async def _write_spec(self, run: PipelineRun) -> None:
        """The run's spec under its own key, once (a writer that finds it there: the same spec)."""
        key = spec_key(run.run_id)
        with contextlib.suppress(KeyWrongLastSequenceError):
            await self.kv.create(key, run.spec.model_dump_json().encode())
        self._keep_spec(key, run.spec)

    def _keep_head(self, run_id: str, revision: int, head: RunHead) -> None:
        self._heads[run_id] = (revision, head)
        self._heads.move_to_end(run_id)
        while len(self._heads) > self.max_heads:
            self._heads.popitem(last=False)

    async def create(self, run: PipelineRun) -> int:
        head, chunks = split(run)
        await self._write_spec(run)
        names = await self._write_chunks(run.run_id, chunks)
        written_head = RunHead(run=head, chunks=names)
        revision = int(await self.kv.create(run.run_id, head_bytes(written_head)))
        self._keep_written(Stored(run, written_head, chunks, revision))
        return revision

    async def create_once(self, run: PipelineRun) -> bool:
        """Create ``run``; False when a run with its id exists already."""
        try:
            await self.create(run)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def exists(self, run_id: str) -> bool:
        """Whether a run ``run_id`` is stored (its head alone is read; none when this store has
        read or written it: a run is never deleted, and every outcome of a step asks)."""
        if run_id in self._heads:
            return True
        try:
            entry = await self.kv.get(run_id)
        except KeyNotFoundError:
            return False
        return entry.value is not None

    async def get(self, run_id: str) -> tuple[PipelineRun, int] | None:
        found = await self._read(run_id)
        return None if found is None else (found.run, found.revision)

    async def mutate(
        self,
        run_id: str,
        change: Callable[[PipelineRun], tuple[PipelineRun, T]],
        tries: int = 20,
        before_write: Callable[[PipelineRun, T], Awaitable[None]] | None = None,
    ) -> tuple[PipelineRun, T]:
        """Apply a pure ``change`` by compare-and-set of the head, first against the run as this
        store last wrote or read it (no get), reading again on a conflict; an unchanged record is
        not written (a held copy that ``change`` leaves as it is is read again first: it may be
        stale), an unchanged chunk not written again. ``before_write``
        gets each changed run before its head is written (what must hold before anyone reads the
        new state; on a conflict it runs again with the next try's change, so it is idempotent)."""
        held = self._written.get(run_id)  # as this store last wrote or read it: no get first
        for _ in range(tries):
            found = held if held is not None else await self._read(run_id)
            if found is None:
                raise RunNotFound(run_id)
            run, head = found.run, found.head
            changed, result = change(run)
            if changed == run:
                if held is not None:  # nothing to do on a copy that may be stale: read the head
                    held = None
                    continue
                return run, result
            if changed.spec is not run.spec and changed.spec != run.spec:
                raise ValueError(f"run {run_id}: a change may not change its pipeline")
            if not found.spec_stored:
                await self._write_spec(run)
            if before_write is not None:
                await before_write(changed, result)
            # the steps the change left as they were: as the run's last split has them
            like = (run, head.run, found.chunks) if found.spec_stored else None  # (jobs inline: not)
            new_head, chunks = split(changed, like)
            dirty = {name: jobs for name, jobs in chunks.items() if found.chunks.get(name) != jobs}
            written = await self._write_chunks(run_id, dirty)
            # a chunk left with no jobs (a retry drops the jobs that did not succeed) is named no more
            names = {**{n: g for n, g in head.chunks.items() if n in chunks}, **written}
            written_head = RunHead(run=new_head, chunks=names)
            try:
                revision = await self.kv.update(run_id, head_bytes(written_head), last=found.revision)
            except KeyWrongLastSequenceError:
                await self._remove(run_id, written)  # no head names them
                held = None  # another writer's head came since: read it
                continue
            self._keep_head(run_id, int(revision), written_head)
            self._keep_written(Stored(changed, written_head, chunks, int(revision)))
            await self._remove(
                run_id, {n: g for n, g in head.chunks.items() if n in written or n not in chunks}
            )
            return changed, result
        raise RunConflict(f"run {run_id} changed under {tries} compare-and-sets in a row")

    async def run_ids(self, tries: int = 5) -> list[str]:
        keys = await listed_keys(self.kv, tries)
        return sorted(k for k in keys if "." not in k)  # heads only, not their chunks

    async def listed(self, limit: int = 100) -> list[PipelineRun]:
        """The newest runs first (run ids sort by time), at most ``limit`` (≤ MAX_LISTED)."""
        out: list[PipelineRun] = []
        for run_id in reversed(await self.run_ids()):
            if len(out) >= min(limit, MAX_LISTED):
                break
            found = await self.get(run_id)
            if found is not None:
                out.append(found[0])
        return out

    def _keep_written(self, stored: Stored) -> None:
        run_id = stored.run.run_id
        self._written[run_id] = stored
        self._written.move_to_end(run_id)
        while len(self._written) > self.max_written:
            self._written.popitem(last=False)

    async def _read(self, run_id: str, tries: int = 20) -> Stored | None:
        for _ in range(tries):
            try:
                entry = await self.kv.get(run_id)
            except KeyNotFoundError:
                return None
            if entry.value is None:
                return None
            revision = int(entry.revision or 0)
            written = self._written.get(run_id)
            if written is not None and written.revision == revision:
                self._written.move_to_end(run_id)
                return written
            if b'"chunks"' not in entry.value and b'"run_id"' in entry.value[:40]:
                # a record written before chunks: the whole run in one value, its jobs inline
                legacy = PipelineRun.model_validate_json(entry.value)
                return Stored(legacy, RunHead(run=split(legacy)[0]), {}, revision, spec_stored=False)
            head = await self._parsed_head(run_id, revision, entry.value)
            chunks = await self._read_chunks(run_id, head)
            if chunks is not None:
                found = Stored(join(head.run, chunks), head, chunks, revision)
                if spec_named(entry.value) is None:
                    return dataclasses.replace(found, spec_stored=False)
                self._keep_written(found)  # the next change sets against it, without a get
                return found
        raise RunConflict(f"run {run_id} changed under {tries} reads in a row")

    async def _read_chunks(self, run_id: str, head: RunHead) -> dict[str, ChunkJobs] | None:
        """The chunks ``head`` names; None when one is gone: a newer head replaced it since
        (then the head is read again)."""
        keys = {name: chunk_key(run_id, name, gen) for name, gen in head.chunks.items()}
        chunks: dict[str, ChunkJobs] = {}
        for name, key in keys.items():
            if (kept := self.cache.get(key)) is not None:
                chunks[name] = kept
        missing = [name for name in keys if name not in chunks]
        values = await asyncio.gather(*(self.kv.get(keys[name]) for name in missing), return_exceptions=True)
        for name, value in zip(missing, values, strict=True):
            if isinstance(value, KeyNotFoundError):  # KeyDeletedError too: purged after a commit
                return None
            if isinstance(value, BaseException):
                raise value
            chunks[name] = CHUNK_ADAPTER.validate_json(value.value or b"{}")
            self.cache.put(keys[name], chunks[name])
        return {name: chunks[name] for name in keys}

    async def _write_chunks(self, run_id: str, chunks: dict[str, ChunkJobs]) -> dict[str, str]:
        """Each chunk under a new generation's key; the generations written, by chunk name."""
        names = {name: new_generation() for name in chunks}
        await asyncio.gather(
            *(
                self.kv.create(chunk_key(run_id, name, names[name]), CHUNK_ADAPTER.dump_json(jobs))
                for name, jobs in chunks.items()
            )
        )
        for name, jobs in chunks.items():
            self.cache.put(chunk_key(run_id, name, names[name]), jobs)
        return names

    async def _remove(self, run_id: str, names: dict[str, str]) -> None:
        """Purge chunks no head names any more, side by side (a turn of a wide DAG replaces ten
        chunks: ten round trips one after another were most of its compare-and-set's time)."""
        keys = [chunk_key(run_id, name, generation) for name, generation in names.items()]
        for key in keys:
            self.cache.drop(key)
        # a leftover key is harmless: no head names it
        await asyncio.gather(*(self.kv.purge(key) for key in keys), return_exceptions=True)
