"""``GET /v1/executors``: every executor's latest heartbeat, with what its backend isolates."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ValidationError

from trainyard_contracts import ExecutorHeartbeat
from trainyard_submission.joblist import BucketReader, LatestValues


async def list_executors(reader: BucketReader, now: datetime) -> list[dict[str, Any]]:
    """One row per executor, newest lease first: its heartbeat without the job ids it runs (any
    token may list executors; which jobs run where is each team's own), ``running`` as a count,
    ``alive`` (its lease has not expired) and ``isolation`` (None: an older executor)."""
    rows = []
    for _key, (value, _revision) in (await reader.read(LatestValues())).values.items():
        try:
            beat = ExecutorHeartbeat.model_validate_json(value)
        except ValidationError:
            continue  # not a heartbeat this version reads; the executor's own problem
        row = beat.model_dump(mode="json", exclude={"running"})
        row.update(running=len(beat.running), alive=not beat.expired(now))
        rows.append(row)
    rows.sort(key=lambda r: str(r["time"]), reverse=True)
    return rows
