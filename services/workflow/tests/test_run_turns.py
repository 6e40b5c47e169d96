"""One run moves one caller at a time; the turn applies every fact waiting for it.

The outcomes of a wide layer of steps are handled side by side (the outcome consumer's lanes are
per job). Each used to rewrite the run at once, and they lost the compare-and-set to one another
(a 10-wide DAG met ``RunConflict`` after 20 tries); now they take turns, and a turn takes the
facts of those waiting behind it. The run store here records who is inside ``mutate`` at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from trainyard_contracts import IntakeReply
from trainyard_contracts.runs import PipelineRun
from trainyard_contracts.workflow import PipelineSpec
from trainyard_workflow.core import JobEnded, advance
from trainyard_workflow.service import WorkflowService

pytestmark = [pytest.mark.unit, pytest.mark.workflow]
RUN = "run-turns-1"


def ended_run() -> PipelineRun:
    spec = PipelineSpec.model_validate(
        {"name": "p", "steps": [{"name": "a", "job": {"name": "a", "command": ["true"]}}]}
    )
    return PipelineRun.start(RUN, spec).model_copy(update={"state": "succeeded"})


class CountingRuns:
    """A run store whose ``mutate`` notes the facts it was given and how many callers are inside."""

    def __init__(self, fail_first: bool = False, run: PipelineRun | None = None) -> None:
        self.run = run
        self.inside = self.most_inside = 0
        self.applied: list[Any] = []
        self.wrote = asyncio.Event()  # set on every change written
        self.turns = 0
        self.fail_first = fail_first

    async def mutate(
        self, run_id: str, change: Any, before_write: Any = None
    ) -> tuple[PipelineRun, list[Any]]:
        self.inside += 1
        self.turns += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            await asyncio.sleep(0.01)  # a read and a write on the bus take this long or more
            if self.fail_first:
                self.fail_first = False
                raise ConnectionError("the bucket did not answer")
            self.applied.extend(change.keywords["facts"])
            self.wrote.set()
            return (self.run or ended_run()), []
        finally:
            self.inside -= 1


async def _noop(*_: Any) -> None:
    return None


def service(runs: CountingRuns) -> WorkflowService:
    return WorkflowService(runs, read_job=_noop, intake=None, emit=_noop)  # type: ignore[arg-type]


def fact(i: int) -> JobEnded:
    return JobEnded("a", i, f"job-{i}", "succeeded")


async def test_callers_take_turns_and_every_fact_is_applied_once() -> None:
    runs = CountingRuns()
    workflow = service(runs)
    await asyncio.gather(*(workflow.progress(RUN, [fact(i)]) for i in range(10)))
    assert runs.most_inside == 1
    assert sorted(runs.applied, key=lambda f: f.index) == [fact(i) for i in range(10)]
    assert workflow._turns == {}  # nothing kept once nobody waits


async def test_a_failed_turn_leaves_its_facts_for_the_next() -> None:
    runs = CountingRuns(fail_first=True)
    workflow = service(runs)
    first = asyncio.create_task(workflow.progress(RUN, [fact(0)]))
    await asyncio.sleep(0)  # the first caller has its turn
    second = asyncio.create_task(workflow.progress(RUN, [fact(1)]))
    with pytest.raises(ConnectionError):
        await first
    await second
    assert sorted(runs.applied, key=lambda f: f.index) == [fact(0), fact(1)]


async def test_a_caller_whose_facts_a_turn_applied_returns_without_a_turn_of_its_own() -> None:
    runs = CountingRuns()
    workflow = service(runs)
    await asyncio.gather(*(workflow.progress(RUN, [fact(i)]) for i in range(10)))
    # the first caller's turn, then one turn for the nine that waited behind it
    assert runs.turns == 2
    assert sorted(runs.applied, key=lambda f: f.index) == [fact(i) for i in range(10)]


async def test_a_caller_that_came_during_a_turn_takes_the_next() -> None:
    runs = CountingRuns()
    workflow = service(runs)
    first = asyncio.create_task(workflow.progress(RUN, [fact(0)]))
    await asyncio.sleep(0)  # the first caller has its turn
    assert runs.inside == 1
    await asyncio.gather(first, workflow.progress(RUN))  # a look-over with no facts comes now
    assert runs.turns == 2  # the turn under way began before it came: it looks again itself


class HeldIntake:
    """An intake that answers only when the test lets it."""

    def __init__(self) -> None:
        self.sent, self.answer = asyncio.Event(), asyncio.Event()

    async def submit(self, spec: Any, key: str) -> IntakeReply:
        self.sent.set()
        await self.answer.wait()
        return IntakeReply(accepted=True, job_id="job-a")


async def test_facts_that_come_while_a_turn_waits_for_the_intake_are_applied_meanwhile() -> None:
    spec = PipelineSpec.model_validate(
        {"name": "p", "steps": [{"name": "a", "job": {"name": "a", "command": ["true"]}}]}
    )
    submitted, _ = advance(PipelineRun.start(RUN, spec))  # a's job recorded, not yet answered
    runs = CountingRuns(run=submitted)
    intake = HeldIntake()
    workflow = WorkflowService(runs, read_job=_noop, intake=intake, emit=_noop)  # type: ignore[arg-type]
    sending = asyncio.create_task(workflow.progress(RUN))
    await asyncio.wait_for(intake.sent.wait(), 30)
    runs.wrote.clear()
    # the run is not held behind the send: another caller's fact is written before the answer
    other = asyncio.create_task(workflow.progress(RUN, [fact(7)]))
    await asyncio.wait_for(runs.wrote.wait(), 30)
    assert fact(7) in runs.applied and not sending.done()
    runs.run = None  # the answer applied, the run ends (this store does not evolve it)
    intake.answer.set()
    await asyncio.wait_for(asyncio.gather(sending, other), 30)
