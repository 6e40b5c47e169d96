"""Triggers' decisions, pure: what an event on a trigger's subject does to the trigger's record
(filtered, invalid, deduplicated, folded into a debounce window, or a run to start), and which
decided runs are due. No I/O: the service (triggers.py) reads and writes, this module decides.

- **Events**: a JSON body of at most ``MAX_EVENT_BYTES``; anything else is a bad event, counted on
  every trigger of its subject (``bad_events``, ``last_error``) and never fired.
- **Filter**: a JMESPath expression, true by JMESPath's rules (not null, false, "", [] or {}).
- **Parameters**: JMESPath per pipeline parameter; a string, number or true/false is substituted,
  null leaves the pipeline's default, a list or object makes the event invalid (``invalid``).
- **Dedupe**: the run id is derived from the trigger and the dedupe value (``dedupe_key``), so a
  value that started a run starts no other; without a key, from the event's stream sequence.
- **Debounce (trailing)**: the first matching event opens a window of ``debounce_seconds``; each
  later one in it replaces the parameters; when it closes, the last event's parameters fire once.
- **Once per event**: the record keeps, per stream, the sequence of the last event looked at; an
  event delivered again (after a restart) changes nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult

from trainyard_contracts import FieldError, SpecError
from trainyard_contracts.spec import ParamValue
from trainyard_contracts.triggers import MAX_PENDING_FIRES, PendingFire, TriggerRecord
from trainyard_contracts.workflow import TriggerSpec, validate_pipeline

MAX_EVENT_BYTES = 64 * 1024
MAX_PARAM_CHARS = 4096


@dataclass(frozen=True)
class Event:
    """One message of a stream triggers read."""

    stream: str
    seq: int
    subject: str
    body: bytes


@dataclass(frozen=True)
class Compiled:
    """A trigger's expressions, parsed once."""

    spec: TriggerSpec
    filter: ParsedResult | None
    params: dict[str, ParsedResult]
    dedupe: ParsedResult | None


# what an event is to one trigger
@dataclass(frozen=True)
class Bad:
    reason: str


@dataclass(frozen=True)
class Filtered:
    pass


@dataclass(frozen=True)
class Invalid:
    reason: str


@dataclass(frozen=True)
class Matched:
    params: dict[str, ParamValue]
    dedupe_value: str | None


Outcome = Bad | Filtered | Invalid | Matched


def compile_trigger(spec: TriggerSpec) -> Compiled:
    """The spec's JMESPath expressions parsed; SpecError names each one that does not parse."""
    errors: list[FieldError] = []

    def parse(field: str, expression: str | None) -> ParsedResult | None:
        if expression is None:
            return None
        try:
            return jmespath.compile(expression)
        except JMESPathError as exc:
            errors.append(FieldError(field=field, message=f"not a JMESPath expression: {_one_line(exc)}"))
            return None

    compiled = Compiled(
        spec,
        parse("filter", spec.filter),
        {name: parse(f"params.{name}", e) for name, e in spec.params.items()},
        parse("dedupe_key", spec.dedupe_key),
    )
    if errors:
        raise SpecError(errors)
    return compiled


def read_event(body: bytes) -> Any:
    """The event's JSON; Bad when it is too large or not JSON (the reason says which)."""
    if len(body) > MAX_EVENT_BYTES:
        return Bad(f"event of {len(body)} bytes, more than {MAX_EVENT_BYTES}")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return Bad(f"event is not JSON: {_one_line(exc)[:200]}")


def evaluate(compiled: Compiled, data: Any) -> Outcome:
    """What ``data`` (an event's JSON) is to the trigger."""
    if isinstance(data, Bad):
        return data
    try:
        if compiled.filter is not None and not _truthy(compiled.filter.search(data)):
            return Filtered()
        params: dict[str, ParamValue] = {}
        for name, expression in compiled.params.items():
            value = expression.search(data)
            if value is None:
                continue  # the pipeline's default
            if isinstance(value, (list, dict)) or (isinstance(value, str) and len(value) > MAX_PARAM_CHARS):
                return Invalid(f"params.{name}: expected a string, number or true/false from the event")
            params[name] = value
        dedupe_value = None
        if compiled.dedupe is not None:
            found = compiled.dedupe.search(data)
            if found is None:
                return Invalid("dedupe_key: the event has no value there")
            dedupe_value = json.dumps(found, sort_keys=True, separators=(",", ":"))
    except JMESPathError as exc:
        return Invalid(f"evaluating the trigger on the event: {_one_line(exc)[:300]}")
    try:
        validate_pipeline(compiled.spec.pipeline_document(), params)
    except SpecError as exc:
        return Invalid(f"the pipeline with the event's parameters: {str(exc)[:300]}")
    return Matched(params, dedupe_value)


def trigger_run_id(name: str, created: datetime, basis: str) -> str:
    """The run a trigger starts for ``basis`` (a dedupe value, or an event's stream and
    sequence): always the same run. ``created`` tells a trigger made again under the same name
    from the one before it."""
    digest = hashlib.sha256(f"{name}\n{created.isoformat()}\n{basis}".encode()).hexdigest()
    return f"trg-{digest[:28]}"


# -- the trigger's record: each function is the pure change one compare-and-set applies ---------


def record_event(
    record: TriggerRecord, event: Event, outcome: Outcome, now: datetime, run_exists: bool
) -> tuple[TriggerRecord, list[PendingFire]]:
    """The record with ``event`` looked at; the fires due at once. ``run_exists``: whether the
    run the event's dedupe value names exists already (the service looks before deciding)."""
    if event.seq <= record.seen.get(event.stream, 0):
        return record, []  # looked at before: delivered again
    seen = {**record.seen, event.stream: event.seq}
    if record.spec.suspended:  # dropped, as a suspended schedule's ticks are: a resume fires none of it
        return record.model_copy(update={"seen": seen, "suspended_events": record.suspended_events + 1}), []
    if isinstance(outcome, Bad):
        return record.model_copy(
            update={"seen": seen, "bad_events": record.bad_events + 1, "last_error": outcome.reason}
        ), []
    if isinstance(outcome, Filtered):
        return record.model_copy(update={"seen": seen, "filtered": record.filtered + 1}), []
    if isinstance(outcome, Invalid):
        return record.model_copy(
            update={"seen": seen, "invalid": record.invalid + 1, "last_error": outcome.reason}
        ), []
    return _matched(record.model_copy(update={"seen": seen}), event, outcome, now, run_exists)


def record_suspended(record: TriggerRecord, suspended: bool) -> tuple[TriggerRecord, None]:
    """``trigger suspend|resume``: the events from now on are dropped, or looked at again. Fires
    decided before a suspension (a debounce window open) still start."""
    return record.model_copy(update={"spec": record.spec.model_copy(update={"suspended": suspended})}), None


def dedupe_run_id(record: TriggerRecord, outcome: Matched) -> str | None:
    """The run the event's dedupe value names (None without a dedupe key)."""
    if outcome.dedupe_value is None:
        return None
    return trigger_run_id(record.spec.name, record.created, "dedupe:" + outcome.dedupe_value)


def _matched(
    record: TriggerRecord, event: Event, outcome: Matched, now: datetime, run_exists: bool
) -> tuple[TriggerRecord, list[PendingFire]]:
    by_value = dedupe_run_id(record, outcome)
    window = next((p for p in record.pending if p.due > now), None) if record.spec.debounce_seconds else None
    if by_value is not None and (run_exists or _closed_fire(record, by_value, window)):
        return record.model_copy(update={"deduplicated": record.deduplicated + 1}), []
    if window is not None:  # the window's last event so far: its parameters fire
        folded = replace_fire(window, by_value or window.run_id, outcome.params, event, window.events + 1)
        pending = [folded if p is window else p for p in record.pending]
        return record.model_copy(update={"pending": pending, "debounced": record.debounced + 1}), []
    if len(record.pending) >= MAX_PENDING_FIRES:
        reason = f"{MAX_PENDING_FIRES} runs are waiting to start already"
        return record.model_copy(update={"invalid": record.invalid + 1, "last_error": reason}), []
    run_id = by_value or trigger_run_id(record.spec.name, record.created, f"event:{event.stream}:{event.seq}")
    fire = PendingFire(
        run_id=run_id,
        params=outcome.params,
        due=now + timedelta(seconds=record.spec.debounce_seconds),
        stream=event.stream,
        seq=event.seq,
    )
    changed = record.model_copy(update={"pending": [*record.pending, fire]})
    return changed, ([] if record.spec.debounce_seconds else [fire])


def _closed_fire(record: TriggerRecord, run_id: str, window: PendingFire | None) -> bool:
    return any(p.run_id == run_id and p is not window for p in record.pending)


def replace_fire(
    fire: PendingFire, run_id: str, params: dict[str, ParamValue], event: Event, events: int
) -> PendingFire:
    return fire.model_copy(
        update={
            "run_id": run_id,
            "params": params,
            "stream": event.stream,
            "seq": event.seq,
            "events": events,
        }
    )


def due_fires(record: TriggerRecord, now: datetime) -> list[PendingFire]:
    return [p for p in record.pending if p.due <= now]


def record_fired(record: TriggerRecord, run_id: str) -> tuple[TriggerRecord, bool]:
    """The fire of ``run_id`` done (its run exists): out of ``pending``, counted once."""
    if not any(p.run_id == run_id for p in record.pending):
        return record, False
    pending = [p for p in record.pending if p.run_id != run_id]
    return record.model_copy(
        update={"pending": pending, "fired": record.fired + 1, "last_run_id": run_id}
    ), True


def record_not_fired(record: TriggerRecord, run_id: str, reason: str) -> tuple[TriggerRecord, bool]:
    """The fire of ``run_id`` given up (its pipeline did not validate): counted as invalid."""
    if not any(p.run_id == run_id for p in record.pending):
        return record, False
    pending = [p for p in record.pending if p.run_id != run_id]
    return record.model_copy(
        update={"pending": pending, "invalid": record.invalid + 1, "last_error": reason[:500]}
    ), True


def _truthy(value: Any) -> bool:
    """JMESPath's truth: null, false and empty strings, lists and objects are false (0 is true)."""
    return not (value is None or value is False or value in ("", [], {}))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


__all__ = [
    "MAX_EVENT_BYTES",
    "Bad",
    "Compiled",
    "Event",
    "Filtered",
    "Invalid",
    "Matched",
    "compile_trigger",
    "dedupe_run_id",
    "due_fires",
    "evaluate",
    "read_event",
    "record_event",
    "record_fired",
    "record_not_fired",
    "trigger_run_id",
]
