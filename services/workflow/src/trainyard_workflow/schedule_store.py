"""Schedules in their KV bucket (``<prefix>_schedules``, one key per name): every change is a
compare-and-set on the revision read, read again on a conflict (named_store.py)."""

from __future__ import annotations

from nats.js.kv import KeyValue

from trainyard_contracts.schedules import ScheduleRecord
from trainyard_workflow.named_store import NamedStore, RecordConflict, RecordExists, RecordNotFound

MAX_SCHEDULES = 1000
ScheduleNotFound, ScheduleExists, ScheduleConflict = RecordNotFound, RecordExists, RecordConflict


class ScheduleStore(NamedStore[ScheduleRecord]):
    def __init__(self, kv: KeyValue) -> None:
        super().__init__(kv, ScheduleRecord, lambda record: record.spec.name, "schedule", MAX_SCHEDULES)
