"""Triggers: create, list, get, delete, and what an event on a trigger's subject starts.

Each matching event fires at most once, across restarts and replicas (docs/workflows.md,
"Triggers"):
- the events come from durable consumers that hold one unacknowledged message at a time over all
  replicas (the triggers stream; the models stream: ``model.<name>.registered`` and MLflow's
  changes its webhooks tell, ``model.<name>.model_version_alias_created`` ...), so every
  trigger sees them in stream order;
- for every trigger whose subject the event matches, one compare-and-set records the event's
  sequence as looked at, with what it did (counted, or a fire stored as ``pending`` under a run
  id derived from the trigger and the dedupe value or the event's sequence): the same event
  delivered again changes nothing;
- the run is created under that id with a KV create, which fails if the run exists: a fire
  pending after a crash is started again as the same run (by the event's handler, or by the
  ticker on the lease holder, which also fires debounce windows that closed);
- then the fire leaves ``pending`` (compare-and-set again).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from trainyard_contracts import FieldError, SpecError, Subjects
from trainyard_contracts._time import utcnow
from trainyard_contracts.documents import model_of_document
from trainyard_contracts.runs import PipelineRun
from trainyard_contracts.subjectpatterns import pattern_within, subject_matches
from trainyard_contracts.triggers import PendingFire, TriggerRecord
from trainyard_contracts.workflow import JOB_STEP, PipelineSpec, TriggerSpec, validate_pipeline
from trainyard_workflow.named_store import NamedStore, RecordNotFound
from trainyard_workflow.store import RunStore
from trainyard_workflow.trigger_core import (
    Bad,
    Compiled,
    Event,
    Invalid,
    Matched,
    compile_trigger,
    dedupe_run_id,
    due_fires,
    evaluate,
    read_event,
    record_event,
    record_fired,
    record_not_fired,
    record_suspended,
)

log = logging.getLogger("trainyard.workflow.triggers")

MAX_TRIGGERS = 1000
StartRun = Callable[[str, PipelineSpec, str], Awaitable[PipelineRun]]
StreamHeads = Callable[[], Awaitable[dict[str, int]]]  # the last sequence of each stream triggers read


class TriggerStore(NamedStore[TriggerRecord]):
    def __init__(self, kv: Any) -> None:
        super().__init__(kv, TriggerRecord, lambda record: record.spec.name, "trigger", MAX_TRIGGERS)


def allowed_patterns(subjects: Subjects, foreign: list[str]) -> list[str]:
    """What triggers may follow: ``<prefix>.trigger.>``, the model events (a version registered,
    and what MLflow's webhooks tell: an alias set or deleted, a version or model created in MLflow),
    and the operator's allow-list of other systems' subjects (CommonSettings.trigger_subjects)."""
    return [subjects.trigger_events, subjects.all_model_events, *foreign]


def validate_trigger(document: Any, allowed: list[str]) -> TriggerSpec:
    """A trigger document; SpecError names every bad field: a subject outside ``allowed``, an
    expression that does not parse, a pipeline that is not valid with its own defaults."""
    spec = model_of_document(TriggerSpec, document, "trigger")
    if not any(pattern_within(spec.subject, pattern) for pattern in allowed):
        message = f"not a subject triggers may follow here; allowed: {', '.join(allowed)}"
        raise SpecError(
            [FieldError(field="subject", message=message + " (the operator's TRAINYARD_TRIGGER_SUBJECTS)")]
        )
    compile_trigger(spec)
    try:
        validate_pipeline(spec.pipeline_document())  # with its own defaults: give every parameter one
    except SpecError as exc:
        raise SpecError(
            [FieldError(field=_field_of(spec, e.field), message=e.message) for e in exc.errors]
        ) from None
    return spec


def _field_of(spec: TriggerSpec, field: str) -> str:
    """A field of the pipeline a trigger runs, as the trigger document names it."""
    if spec.job is None:
        return f"pipeline.{field}"
    step = f"steps.0.{JOB_STEP}."
    return "job." + (field[len(step) :] if field.startswith(step) else field)


class TriggerService:
    def __init__(
        self,
        triggers: TriggerStore,
        runs: RunStore,
        start_run: StartRun,
        allowed: list[str],
        stream_heads: StreamHeads,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.triggers, self.runs, self.start_run = triggers, runs, start_run
        self.allowed, self.stream_heads, self.clock = allowed, stream_heads, clock
        self._compiled: dict[tuple[str, datetime], Compiled] = {}

    async def create(self, document: Any, by: str | None = None) -> TriggerRecord:
        spec = validate_trigger(document, self.allowed)
        # what the streams hold already was published before the trigger: looked at, not fired (a
        # sequence, not a time: the server's clock and ours may differ)
        heads = await self.stream_heads()
        record = TriggerRecord(spec=spec, seen=heads, created=self.clock(), created_by=by)
        await self.triggers.create(record)
        return record

    @property
    def store(self) -> Any:
        return self.triggers

    async def get(self, name: str) -> TriggerRecord:
        found = await self.triggers.get(name)
        if found is None:
            raise RecordNotFound(name)
        return found[0]

    async def delete(self, name: str) -> None:
        """The trigger goes; runs it started go on."""
        await self.triggers.delete(name)

    async def suspend(self, name: str, suspended: bool) -> TriggerRecord:
        """Suspend or resume (compare-and-set; asked twice, the same)."""
        record, _ = await self.triggers.mutate(name, functools.partial(record_suspended, suspended=suspended))
        return record

    # -- events -----------------------------------------------------------------------------------

    async def on_event(self, event: Event) -> list[str]:
        """An event from a stream triggers read: every trigger on its subject looks at it; the
        runs started at once (no debounce)."""
        data: Any = None
        started: list[str] = []
        for name in await self.triggers.names():
            found = await self.triggers.get(name)
            if found is None or not subject_matches(found[0].spec.subject, event.subject):
                continue
            record = found[0]
            if event.seq <= record.seen.get(event.stream, 0):
                continue  # looked at already, or published before the trigger existed
            if data is None:
                data = read_event(event.body)
            started += await self._look_at(record, event, data)
        return started

    async def _look_at(self, record: TriggerRecord, event: Event, data: Any) -> list[str]:
        name = record.spec.name
        outcome = evaluate(self._compile(record), data)
        by_value = dedupe_run_id(record, outcome) if isinstance(outcome, Matched) else None
        exists = by_value is not None and await self.runs.get(by_value) is not None
        change = functools.partial(
            record_event, event=event, outcome=outcome, now=self.clock(), run_exists=exists
        )
        try:
            _, due = await self.triggers.mutate(name, change)
        except RecordNotFound:
            return []  # deleted meanwhile
        if isinstance(outcome, (Bad, Invalid)):
            log.warning(
                "trigger event not fired",
                extra={"trigger": name, "subject": event.subject, "seq": event.seq, "reason": outcome.reason},
            )
        return [run_id for fire in due if (run_id := await self.fire(name, fire))]

    def _compile(self, record: TriggerRecord) -> Compiled:
        key = (record.spec.name, record.created)
        if key not in self._compiled:
            if len(self._compiled) > 2 * 1000:
                self._compiled.clear()
            self._compiled[key] = compile_trigger(record.spec)
        return self._compiled[key]

    async def fire(self, name: str, fire: PendingFire) -> str | None:
        """Start the run of ``fire`` (once: the run id is the fire's), then take it out of pending."""
        record = await self.get(name)
        try:
            pipeline = validate_pipeline(record.spec.pipeline_document(), fire.params)
        except SpecError as exc:
            await self.triggers.mutate(
                name, functools.partial(record_not_fired, run_id=fire.run_id, reason=str(exc))
            )
            return None
        await self.start_run(fire.run_id, pipeline, f"trigger:{name}")
        await self.triggers.mutate(name, functools.partial(record_fired, run_id=fire.run_id))
        return fire.run_id

    async def tick(self) -> list[str]:
        """The ticker's pass: every trigger's fires that are due (debounce windows that closed,
        fires a crash left pending)."""
        started: list[str] = []
        now = self.clock()
        for name in await self.triggers.names():
            try:
                found = await self.triggers.get(name)
                for fire in due_fires(found[0], now) if found else []:
                    if run_id := await self.fire(name, fire):
                        started.append(run_id)
            except RecordNotFound:
                continue  # deleted meanwhile
            except Exception:
                log.exception("a trigger's pass failed; trying again next pass", extra={"trigger": name})
        return started
