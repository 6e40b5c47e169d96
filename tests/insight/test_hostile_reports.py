"""A job that writes anything into its metrics file cannot break the executor or other jobs.

Garbage, a 1 MiB line, NaN and infinities, 10,000 names, the file replaced by a link to a host
file or by a FIFO: the job's valid points still arrive, the rest is dropped and counted in its
log, a neighbour's points are all there, and no host file is read through a link.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from trainyard_contracts import JobSpec, MetricsBatch
from trainyard_scheduler.testkit import quick_scheduler
from trainyard_shared.testing.helpers import running

from .jobs import PY, batches, executor, points

pytestmark = [pytest.mark.insight, pytest.mark.service, pytest.mark.local, pytest.mark.security]

HOSTILE = r"""
import json, os, trainyard
path = os.environ['TRAINYARD_METRICS_FILE']
trainyard.report(0, loss=1.0)
with open(path, 'a') as f:
    f.write('not json\n')
    f.write('[1, 2]\n')
    f.write(json.dumps({'step': 'x', 'values': {'a': 1}}) + '\n')
    f.write(json.dumps({'step': -1, 'values': {'a': 1}}) + '\n')
    f.write(json.dumps({'step': 1, 'values': {'bad name': 1, 'x' * 200: 2, 'ok': 'str'}}) + '\n')
    f.write('{"step": 1, "time": 1, "values": {"nan": NaN, "inf": Infinity, "ninf": -Infinity}}\n')
    f.write('{"step": 1, "values": {"big": 1e999}}\n')
    f.write('{"step": 1, "values": ' + 'x' * (1 << 20) + '\n')
    f.write('\0\0\0\n')
trainyard.report(1, loss=0.5)
for i in range(10_000):
    trainyard.report(2, **{f'name{i}': i})
trainyard.report(3, loss=0.25)
"""

NEIGHBOUR = """
import trainyard
for step in range(300):
    trainyard.report(step, loss=1.0 / (step + 1))
"""


async def test_garbage_huge_lines_nan_and_ten_thousand_names_are_dropped_and_a_neighbour_is_intact(
    common, bus
):
    async with running(quick_scheduler(common)), running(executor(common, metrics_max_names=32)):
        hostile = await bus.submit(JobSpec(name="hostile", command=[PY, "-c", HOSTILE]))
        neighbour = await bus.submit(JobSpec(name="neighbour", command=[PY, "-c", NEIGHBOUR]))
        await asyncio.gather(
            bus.wait_state(hostile, "succeeded", timeout=60),
            bus.wait_state(neighbour, "succeeded", timeout=60),
        )
        hostile_batches = await batches(bus, hostile)
        neighbour_points = await points(bus, neighbour)
        log = await bus.log_text(hostile)
    assert [p["step"] for p in neighbour_points] == list(range(300))
    for batch in hostile_batches:
        MetricsBatch.model_validate(batch)  # no NaN, no bad name reached the stream
    got = [p for b in hostile_batches for p in b["points"]]
    names = {n for p in got for n in p["values"]}
    assert len(names) <= 32 and {"loss", "name0"} <= names
    assert [p["values"]["loss"] for p in got if "loss" in p["values"]] == [1.0, 0.5, 0.25]
    assert hostile_batches[-1]["dropped"] > 9_000  # the names over the limit, counted
    assert any("metrics:" in line and "dropped" in line for line in log), log


async def test_a_link_or_a_fifo_in_place_of_the_metrics_file_is_not_followed(common, bus, tmp_path):
    host_file = tmp_path / "host-secret.jsonl"
    host_file.write_text(json.dumps({"step": 7, "time": 1, "values": {"secret": 42}}) + "\n")
    host_file.chmod(0o644)
    link_job = (
        "import os, time\n"
        "path = os.environ['TRAINYARD_METRICS_FILE']\n"
        f"os.symlink({str(host_file)!r}, path)\n"
        "time.sleep(1.5)\n"
    )
    fifo_job = (
        "import os, time, trainyard\n"
        "path = os.environ['TRAINYARD_METRICS_FILE']\n"
        "os.mkfifo(path)\n"
        "time.sleep(1.5)\n"
        "os.unlink(path)\n"
        "trainyard.report(1, after=1.0)\n"
        "time.sleep(0.5)\n"
    )
    async with running(quick_scheduler(common)), running(executor(common)):
        linked = await bus.submit(JobSpec(name="link", command=[PY, "-c", link_job]))
        fifo = await bus.submit(JobSpec(name="fifo", command=[PY, "-c", fifo_job]))
        await asyncio.gather(
            bus.wait_state(linked, "succeeded", timeout=60), bus.wait_state(fifo, "succeeded", timeout=60)
        )
        linked_points = await points(bus, linked)
        fifo_points = await points(bus, fifo)
        linked_log = await bus.log_text(linked)
        fifo_log = await bus.log_text(fifo)
    assert linked_points == []  # the host file's line was never read
    assert any("symbolic link" in line for line in linked_log), linked_log
    assert any("not a regular file" in line for line in fifo_log), fifo_log
    assert [p["values"] for p in fifo_points] == [{"after": 1.0}]  # a real file afterwards is read
