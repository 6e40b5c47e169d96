"""A ``cache: true`` step that ran and succeeded is remembered before the run's new state is
written: whoever sees the run ended (``pipeline run --wait``, a status poll) and starts it again
gets a hit, never a miss because the entry was still on its way."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from trainyard_contracts import JobRecord, JobSpec, JobState
from trainyard_contracts.lifecycle import new_record
from trainyard_contracts.runs import PipelineRun
from trainyard_contracts.workflow import PipelineSpec
from trainyard_workflow.core import CacheMiss, JobEnded, JobKnown, advance, evolve_all
from trainyard_workflow.service import WorkflowService
from trainyard_workflow.stepcache import CacheEntry

pytestmark = [pytest.mark.unit, pytest.mark.workflow]
KEY = "a" * 64
WHEN = datetime(2026, 12, 4, tzinfo=UTC)


def train_running() -> PipelineRun:
    """prepare succeeded; train (cache: true) missed the cache and its job t1 runs."""
    spec = PipelineSpec.model_validate(
        {
            "name": "p",
            "steps": [
                {"name": "prepare", "job": {"name": "p", "command": ["true"]}},
                {
                    "name": "train",
                    "depends": ["prepare"],
                    "cache": True,
                    "job": {"name": "t", "command": ["true"]},
                },
            ],
        }
    )
    run = advance(PipelineRun.start("run-000001", spec))[0]
    run = advance(evolve_all(run, [JobKnown("prepare", 0, run.steps["prepare"].jobs[0].key, "p1")]))[0]
    run = advance(evolve_all(run, [JobEnded("prepare", 0, "p1", "succeeded")]))[0]
    run = advance(evolve_all(run, [CacheMiss("train", KEY)]))[0]
    return advance(evolve_all(run, [JobKnown("train", 0, run.steps["train"].jobs[0].key, "t1")]))[0]


class LoggedRuns:
    """The run store's compare-and-set in memory, logging each write with the run's state."""

    def __init__(self, run: PipelineRun, log: list[str]) -> None:
        self.run, self.log = run, log

    async def mutate(self, run_id: str, change: Any, before_write: Any = None) -> tuple[PipelineRun, Any]:
        changed, result = change(self.run)
        if changed != self.run:
            if before_write is not None:
                await before_write(changed, result)
            self.log.append(f"run written: {changed.state.value}")
            self.run = changed
        return self.run, result


class LoggedCache:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.entries: list[CacheEntry] = []

    async def remember(self, entry: CacheEntry) -> None:
        self.entries.append(entry)
        self.log.append(f"remembered: {entry.step}")


async def test_the_entry_is_written_before_the_run_says_it_succeeded():
    run = train_running()
    log: list[str] = []
    runs, cache = LoggedRuns(run, log), LoggedCache(log)

    async def read_job(job_id: str) -> JobRecord:
        record = new_record(
            job_id, JobSpec(name="t", command=["true"]), datetime(2026, 12, 4, tzinfo=UTC), "a"
        )
        return record.model_copy(update={"state": JobState.SUCCEEDED, "outputs": {"accuracy": 0.9}})

    async def emit(_: Any) -> None:
        return None

    workflow = WorkflowService(runs, read_job=read_job, intake=None, emit=emit, cache=cache)  # type: ignore[arg-type]
    ended = await workflow.progress(run.run_id, [JobEnded("train", 0, "t1", "succeeded")])

    assert ended.state.value == "succeeded"
    assert log == ["remembered: train", "run written: succeeded"]
    (entry,) = cache.entries
    assert (entry.key, entry.run_id, entry.jobs[0].job_id, entry.outputs) == (
        KEY,
        run.run_id,
        "t1",
        {"accuracy": 0.9},
    )
