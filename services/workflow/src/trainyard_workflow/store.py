"""Pipeline runs in their KV bucket: created once, every change a compare-and-set."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from trainyard_contracts.runs import PipelineRun

T = TypeVar("T")
MAX_LISTED = 1000


class RunNotFound(LookupError):
    pass


class RunConflict(RuntimeError):
    """The run kept changing under us; the caller's message is redelivered."""


class RunStore:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def create(self, run: PipelineRun) -> int:
        return int(await self.kv.create(run.run_id, run.model_dump_json().encode()))

    async def create_once(self, run: PipelineRun) -> bool:
        """Create ``run``; False when a run with its id exists already."""
        try:
            await self.create(run)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def get(self, run_id: str) -> tuple[PipelineRun, int] | None:
        try:
            entry = await self.kv.get(run_id)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return PipelineRun.model_validate_json(entry.value), int(entry.revision or 0)

    async def mutate(
        self, run_id: str, change: Callable[[PipelineRun], tuple[PipelineRun, T]], tries: int = 20
    ) -> tuple[PipelineRun, T]:
        """Apply a pure ``change`` by compare-and-set, reading again on a conflict; an unchanged
        record is not written."""
        for _ in range(tries):
            found = await self.get(run_id)
            if found is None:
                raise RunNotFound(run_id)
            run, revision = found
            changed, result = change(run)
            if changed == run:
                return run, result
            try:
                await self.kv.update(run_id, changed.model_dump_json().encode(), last=revision)
            except KeyWrongLastSequenceError:
                continue
            return changed, result
        raise RunConflict(f"run {run_id} changed under {tries} compare-and-sets in a row")

    async def run_ids(self) -> list[str]:
        try:
            keys = await self.kv.keys()
        except NoKeysError:
            return []
        return sorted(keys)

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
