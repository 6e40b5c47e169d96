"""What a full read of 10 000 stored records costs (``BucketReader``: the jobs index's first build
reads the bucket this way, and listing did before the index), and ``GET /v1/jobs`` over them
through the jobs index (``pytest -m bench -s``; figures printed).

The README's figure for listing comes from here. No timing is asserted: the machine is shared.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest

from trainyard_contracts import JobSpec, lifecycle
from trainyard_contracts._time import utcnow
from trainyard_contracts.states import JobState
from trainyard_submission.joblist import BucketReader, NewestMatches

from .conftest import AUTH

pytestmark = [pytest.mark.bench, pytest.mark.service]
RECORDS = 10_000


def finished_record(i: int, start):
    spec = JobSpec.model_validate(
        {
            "name": f"job-{i}",
            "command": ["python", "train.py", "--epochs", "3"],
            "queue": ["default", "alpha", "beta"][i % 3],
            "resources": {"cpu": 1, "memory": "256Mi"},
            "env": {"A": "1", "B": "two"},
        }
    )
    now = start + timedelta(milliseconds=i)
    record = lifecycle.new_record(f"bench{i:08d}", spec, now, "api:alpha:x")
    record = lifecycle.schedule(lifecycle.advance(record, JobState.QUEUED, now), "local-1", now)
    record = lifecycle.start(record, now)
    if i % 10:  # one in ten still running
        record = lifecycle.finish(record, JobState.SUCCEEDED, now, exit_code=0, reason=None)
    return record


async def test_listing_ten_thousand_records(api, capsys):
    trainyard = api.app.state.trainyard
    js, bucket = trainyard["js"], trainyard["subjects"].buckets.jobs
    start = utcnow()
    records = [finished_record(i, start) for i in range(RECORDS)]
    for batch in range(0, RECORDS, 500):
        await asyncio.gather(
            *(
                js.publish(f"$KV.{bucket}.{r.job_id}", r.model_dump_json().encode())
                for r in records[batch : batch + 500]
            )
        )
    # their entries in the jobs index, as their writers would have made them (GET /v1/jobs reads it)
    await trainyard["service"].index.rebuild(records)
    reader = BucketReader(js, bucket)
    lines = []
    for label, state, queue, limit in [
        ("limit=100", None, None, 100),
        ("state=running limit=100", "running", None, 100),
        ("queue=alpha limit=100", None, "alpha", 100),
        ("limit=10000", None, None, 10_000),
    ]:
        cpu, wall = time.process_time(), time.perf_counter()
        matches = await reader.read(NewestMatches(state, queue, limit))
        rows = matches.records()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        assert matches.seen == RECORDS and len(rows) == min(limit, RECORDS if state is None else 1000)
        lines.append(f"{label:24s} {len(rows):5d} rows  {cpu * 1e3:5.0f} ms CPU  {wall * 1e3:5.0f} ms wall")
    # and through the API: the same read plus the JSON answer
    cpu = time.process_time()
    resp = await api.get("/v1/jobs", params={"limit": 100}, headers=AUTH)
    cpu = time.process_time() - cpu
    assert resp.status_code == 200 and len(resp.json()["jobs"]) == 100
    lines.append(f"{'GET /v1/jobs?limit=100':24s}   100 rows  {cpu * 1e3:5.0f} ms CPU")
    with capsys.disabled():
        print(f"\nlisting over {RECORDS} job records (this process's CPU; nats-server's not counted):")
        print("\n".join(lines))
