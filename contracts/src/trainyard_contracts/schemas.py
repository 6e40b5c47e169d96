"""Generate the JSON Schema files under contracts/schemas/ (``python -m trainyard_contracts.schemas``).

A test regenerates them in memory and fails when the checked-in files are stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from trainyard_contracts.audit import AuditEntry
from trainyard_contracts.commands import ExecutorCommand
from trainyard_contracts.events import IntakeReply, JobEvent, LogChunk
from trainyard_contracts.metrics import MetricsBatch
from trainyard_contracts.modelregistry import AliasRecord, RegistryReply, RegistryRequest
from trainyard_contracts.queues import QueueConfig
from trainyard_contracts.records import ExecutorHeartbeat, JobRecord, ModelVersionRecord
from trainyard_contracts.reports import ExecutorReport
from trainyard_contracts.runs import PipelineEvent, PipelineReply, PipelineRequest, PipelineRun
from trainyard_contracts.schedules import ScheduleRecord, ScheduleReply, ScheduleRequest
from trainyard_contracts.scheduling import CycleDecisions, DryRunAnswer, WhyAnswer
from trainyard_contracts.spec import JobSpec
from trainyard_contracts.sweeps import SweepRecord, SweepReply, SweepRequest, SweepSpec
from trainyard_contracts.workflow import ArraySpec, PipelineSpec, ScheduleSpec, TriggerSpec

SCHEMAS: dict[str, Any] = {
    "job-spec": JobSpec,
    "job-event": JobEvent,
    "job-record": JobRecord,
    "model-version": ModelVersionRecord,
    "executor-command": ExecutorCommand,
    "executor-heartbeat": ExecutorHeartbeat,
    "executor-report": ExecutorReport,
    "log-chunk": LogChunk,
    "metrics-batch": MetricsBatch,
    "intake-reply": IntakeReply,
    "queue-config": QueueConfig,
    "scheduler-cycle": CycleDecisions,
    "scheduler-why": WhyAnswer,
    "scheduler-dry-run": DryRunAnswer,
    "pipeline-spec": PipelineSpec,
    "array-spec": ArraySpec,
    "schedule-spec": ScheduleSpec,
    "trigger-spec": TriggerSpec,
    "pipeline-run": PipelineRun,
    "pipeline-event": PipelineEvent,
    "pipeline-reply": PipelineReply,
    "pipeline-request": PipelineRequest,
    "schedule-record": ScheduleRecord,
    "schedule-request": ScheduleRequest,
    "schedule-reply": ScheduleReply,
    "registry-request": RegistryRequest,
    "registry-reply": RegistryReply,
    "model-alias": AliasRecord,
    "audit-entry": AuditEntry,
    "sweep-spec": SweepSpec,
    "sweep-record": SweepRecord,
    "sweep-request": SweepRequest,
    "sweep-reply": SweepReply,
}

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "schemas"


def render() -> dict[str, str]:
    files = {}
    for name, model in SCHEMAS.items():
        schema = TypeAdapter(model).json_schema(mode="validation")
        schema["$id"] = f"https://trainyard.dev/schemas/{name}.json"
        files[f"{name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files


def write(directory: Path = DEFAULT_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in render().items():
        path = directory / filename
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR
    for path in write(target):
        print(path)
