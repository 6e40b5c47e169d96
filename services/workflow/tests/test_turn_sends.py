"""A turn's submissions go out while its announcements' acks are on their way back, and the turn
still ends well only once the acks are (real nats-server: the run bucket, the events' stream, the
intake stream with a responder answering as the submission service does, one job per key).

The acks are held back by a gate, standing for their round trip: the submission of the next
step must reach the intake while they are held, and a missing ack must fail the turn as before.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats.errors
import pytest
from nats.js.api import KeyValueConfig, StreamConfig

from trainyard_contracts import IntakeReply, new_job_id
from trainyard_contracts.runs import PipelineEnvelope, PipelineRun
from trainyard_contracts.workflow import validate_pipeline
from trainyard_shared.bus import INTAKE_DUPLICATE_WINDOW
from trainyard_shared.testing.helpers import eventually
from trainyard_workflow.core import JobEnded
from trainyard_workflow.intake import REPLY_HEADER, IntakeSender
from trainyard_workflow.service import WorkflowService
from trainyard_workflow.store import RunStore

pytestmark = [pytest.mark.service, pytest.mark.workflow]
RUN = "0mx9turnsends01"


class GatedEvents:
    """``emit_many``: the events published in order at once; their acks checked when the gate
    opens (``fail``: a missing ack)."""

    def __init__(self, js: Any, stream: str) -> None:
        self.js, self.stream = js, stream
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False
        self.checked: list[str] = []  # the events whose acks came back and were checked

    async def __call__(self, events: list[PipelineEnvelope]) -> Any:
        acks = [
            await self.js.publish_async(
                f"{self.stream}.{e.run_id}.{e.type}",
                e.model_dump_json().encode(),
                stream=self.stream,
                headers={"Nats-Msg-Id": e.msg_id()},
            )
            for e in events
        ]
        return self._acks(events, acks)

    async def _acks(self, events: list[PipelineEnvelope], acks: list[Any]) -> None:
        await self.gate.wait()
        if self.fail:
            for ack in acks:
                ack.cancel()
            raise nats.errors.TimeoutError
        await asyncio.gather(*acks)
        self.checked += [e.type for e in events]


class Intake:
    """Answers the workflow's submissions as the submission service does: one job per key."""

    def __init__(self) -> None:
        self.jobs: dict[str, str] = {}
        self.sends: list[str] = []

    async def answer(self, msg: Any) -> None:
        key = msg.headers["Nats-Msg-Id"]
        self.sends.append(key)
        job_id = self.jobs.setdefault(key, new_job_id())
        await msg._client.publish(
            msg.headers[REPLY_HEADER], IntakeReply(accepted=True, job_id=job_id).model_dump_json().encode()
        )


def _key(step: str) -> str:
    return f"workflow:{RUN}:{step}:0:1"


async def _workflow(bus: Any) -> tuple[WorkflowService, GatedEvents, Intake]:
    subjects = bus.subjects
    kv = await bus.js.create_key_value(KeyValueConfig(bucket=subjects.buckets.pipelines, history=5))
    stream = f"{subjects.prefix}ev"
    await bus.js.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.>"]))
    await bus.js.add_stream(  # as provisioned: a key sent again after 0.1 s is stored again
        StreamConfig(
            name=f"{subjects.prefix}in",
            subjects=[subjects.intake_workflow],
            duplicate_window=INTAKE_DUPLICATE_WINDOW,
        )
    )
    intake = Intake()
    await bus.nc.subscribe(subjects.intake_workflow, cb=intake.answer)
    events = GatedEvents(bus.js, stream)

    async def emit(event: PipelineEnvelope) -> None:
        await (await events([event]))

    async def no_record(_: str) -> None:
        return None

    sender = IntakeSender(bus.nc, bus.js, subjects.intake_workflow, timeout=10)
    service = WorkflowService(RunStore(kv), no_record, sender, emit, emit_many=events)
    return service, events, intake


async def _b_sent_with_acks_held(
    service: WorkflowService, events: GatedEvents, intake: Intake, fail: bool = False
) -> tuple[asyncio.Task[PipelineRun], list[JobEnded]]:
    """A run of a -> b whose a ended: its outcome's turn under way, b's submission at the intake,
    the turn's acks held at the gate (``fail``: to be missing when it opens)."""
    steps = [
        {"name": "a", "job": {"name": "a", "command": ["true"]}},
        {"name": "b", "depends": ["a"], "job": {"name": "b", "command": ["true"]}},
    ]
    await service.start_spec(RUN, validate_pipeline({"name": "p", "steps": steps}))

    async def settled() -> str | None:  # a's job recorded and nothing under way
        run = (await service.status(RUN)) if not service._background else None
        return run.steps["a"].jobs[0].job_id if run is not None else None

    ended = [JobEnded("a", 0, await eventually(settled, 20, "a's job recorded"), "succeeded")]
    events.fail = fail
    events.gate.clear()
    moving = asyncio.create_task(service.progress(RUN, ended))
    await eventually(lambda: _sent(intake, _key("b")), 20, "b sent while the turn's acks are held")
    assert "step_ended" not in events.checked
    return moving, ended


async def test_the_next_steps_submission_goes_before_the_turns_acks_are_back(bus):
    service, events, intake = await _workflow(bus)
    try:
        moving, _ = await _b_sent_with_acks_held(service, events, intake)
        events.gate.set()
        run = await moving
        assert "step_ended" in events.checked  # the turn checked its acks before it ended well
        assert run.steps["b"].jobs[0].job_id == intake.jobs[_key("b")]
    finally:
        await service.stop()


async def test_a_missing_ack_fails_the_turn_and_the_retry_records_the_same_job(bus):
    service, events, intake = await _workflow(bus)
    try:
        moving, ended = await _b_sent_with_acks_held(service, events, intake, fail=True)
        events.gate.set()
        with pytest.raises(nats.errors.TimeoutError):
            await moving  # as when the acks came before the sends: the outcome is redelivered
        stored = await service.status(RUN)
        assert stored.steps["b"].jobs[0].job_id is None  # the dropped answer: not recorded
        events.fail = False
        run = await service.progress(RUN, ended)  # the redelivered outcome
        assert run.steps["b"].jobs[0].job_id == intake.jobs[_key("b")]
        # sent again under the same key (a duplicate's resend reaches the responder too): one job
        assert intake.sends.count(_key("b")) >= 2 and len(intake.jobs) == 2
    finally:
        await service.stop()


async def _sent(intake: Intake, key: str) -> bool:
    return key in intake.sends
