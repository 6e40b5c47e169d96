"""Docker and Podman: a job in a container reports through its mounted work dir.

The test image is a 2 MB busybox (no Python), so the job appends the reporter's JSON lines with
``sh``; that the reporter module itself is there and readable by the container's non-root user is
shown by reading it from inside. The executor's side reads the file on the host as for local jobs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from trainyard_executor.backends.container_gang import GangAttempt
from trainyard_executor.core import free_loopback_port
from trainyard_executor.jobenv import plan_gang
from trainyard_executor.metricsfile import MetricsFile, MetricsLimits, MetricsParser
from trainyard_executor.sampling import ResourceSampler, with_samples
from trainyard_executor.testengines import Lines, make_launch

pytestmark = [pytest.mark.insight, pytest.mark.integration]
MIB = 1024 * 1024
pytest_plugins = ["trainyard_executor.testengines"]  # the engine and backend fixtures


async def test_a_container_job_writes_its_metrics_file_in_the_mounted_work_dir(backend, tmp_path):
    first = '{"step": 1, "time": 2.5, "values": {"loss": 0.5}}'
    second = '{"step": 2, "time": 3.5, "values": {"loss": 0.25}}'
    script = (
        f"echo '{first}' >> \"$TRAINYARD_METRICS_FILE\";"
        f"echo '{second}' >> \"$TRAINYARD_METRICS_FILE\";"
        'echo "path=$PYTHONPATH";'
        'head -c 3 "${PYTHONPATH%%:*}/trainyard.py"; echo'
    )
    launch = make_launch(tmp_path, ["sh", "-c", script])
    lines = Lines()
    attempt = await backend.start(launch, lines)
    outcome = await attempt.wait()
    assert outcome.kind == "succeeded", (outcome.reason, lines.got)
    assert lines.of("stdout") == ["path=/trainyard/work/.trainyard-py", '"""'], lines.got
    parser = MetricsParser()
    data, _ = MetricsFile(launch.workdir, MetricsLimits()).read()
    assert [(p.step, p.values) for p in parser.feed(data)] == [(1, {"loss": 0.5}), (2, {"loss": 0.25})]
    await attempt.release()


# a 200 MiB shell variable, held while it sleeps (not the last command: ash would exec it and
# free the shell); ~400 MiB at most while the variable grows
HOLD_200_MIB = "x=$(yes | head -c 209715200); echo held; sleep 120; echo ${#x}"


async def test_a_containers_memory_is_sampled_from_the_engines_stats(backend, engine, tmp_path):
    """The executor's sampler reads a container's use through its engine's stats API: a job that
    holds 200 MiB is sampled at 200 MiB or more, and the attempt's peak (what goes on the record)
    is that. On Podman too: its Docker-compatible stats answer has ``memory_stats.usage`` and
    ``cpu_stats.cpu_usage.total_usage`` as Docker's does, without ``memory_stats.stats`` (checked
    against podman 4.3 here), so its figure includes the page cache."""
    launch = make_launch(tmp_path, ["sh", "-c", HOLD_200_MIB], memory_mb=1024)
    lines = Lines()
    attempt = await backend.start(launch, lines)
    sampler = ResourceSampler(attempt.read_usage, every_seconds=0.5)
    try:

        async def held() -> bool:
            await asyncio.to_thread(sampler.sample)
            return sampler.peak_rss_bytes >= 200 * MIB

        await wait_until_async(held, "a stats sample of 200 MiB", timeout=120)
        assert sampler.peak_rss_bytes < 1024 * MIB  # the container's, within its limit
    finally:
        await attempt.cancel(0)
        outcome = await attempt.wait()
        await attempt.release()
    usage = with_samples(outcome.usage, sampler)
    assert usage is not None and usage.peak_memory_bytes >= 200 * MIB


# 100 MiB held by each rank (up to twice that while the variable grows: waited out by "held")
HOLD_100_MIB = "x=$(yes | head -c 104857600); echo held; sleep 120; echo ${#x}"


@pytest.mark.distributed
async def test_a_container_gangs_ranks_are_sampled_together(backend, engine, tmp_path):
    """A gang on one engine is sampled as one attempt: every rank's container through its
    engine's stats, summed. Two ranks holding 100 MiB each read 200 MiB or more together, while
    each rank alone reads less than that."""
    gang = plan_gang(2, None, free_loopback_port)
    launch = make_launch(tmp_path, ["sh", "-c", HOLD_100_MIB], gang=gang, memory_mb=512)
    lines = Lines()
    attempt = await backend.start(launch, lines)
    assert isinstance(attempt, GangAttempt), lines.got
    try:

        async def both_held() -> bool:
            return sorted(lines.of("stdout")) == ["[rank 0] held", "[rank 1] held"]

        await wait_until_async(both_held, "both ranks holding their 100 MiB", timeout=120)
        together = await asyncio.to_thread(attempt.read_usage)
        alone = [await asyncio.to_thread(m.read_usage) for m in attempt.members]
        assert together is not None and together.rss_bytes >= 200 * MIB, together
        assert all(r is not None and 100 * MIB <= r.rss_bytes < 200 * MIB for r in alone), alone
        assert together.rss_bytes < 1024 * MIB  # the gang's, not the engine's host
    finally:
        await attempt.cancel(0)
        await attempt.wait()
        await attempt.release()


async def wait_until_async(probe: Any, what: str, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await probe():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.2)
