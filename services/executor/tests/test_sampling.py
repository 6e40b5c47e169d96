"""The resource sampler's readers and arithmetic (sampling.py): a cgroup v2 directory (recorded
files: this machine has cgroup v1 only), a real process group, and points from readings."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from trainyard_contracts import AttemptUsage
from trainyard_executor.metricsfile import MetricsLimits, MetricsParser
from trainyard_executor.sampling import (
    CPU,
    CPU_SECONDS,
    RSS,
    Reading,
    ResourceSampler,
    moved,
    read_cgroup,
    read_process_groups,
    stats_reading,
    with_samples,
)
from trainyard_executor.testkit import Clock

pytestmark = [pytest.mark.unit, pytest.mark.insight]

MIB = 1024 * 1024
# what a cgroup v2 attempt directory holds (recorded from a kernel 6.1 host, controllers off but cpu)
CPU_STAT = "usage_usec 2534012\nuser_usec 2100000\nsystem_usec 434012\nnr_periods 0\nnr_throttled 0\n"


def test_a_cgroup_with_the_memory_controller_reads_cpu_stat_and_memory_current(tmp_path: Path):
    (tmp_path / "cpu.stat").write_text(CPU_STAT)
    (tmp_path / "memory.current").write_text("314572800\n")
    assert read_cgroup(tmp_path) == Reading(cpu_seconds=2.534012, rss_bytes=314572800)


def test_a_cgroup_without_the_memory_controller_sums_its_processes_resident_sets(tmp_path: Path):
    (tmp_path / "cpu.stat").write_text(CPU_STAT)
    (tmp_path / "cgroup.procs").write_text(f"{os.getpid()}\n999999999\n")  # one gone: skipped
    reading = read_cgroup(tmp_path)
    assert reading is not None and reading.cpu_seconds == 2.534012
    own = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    assert own / 2 < reading.rss_bytes < own * 2


def test_no_cgroup_directory_reads_nothing(tmp_path: Path):
    assert read_cgroup(tmp_path / "gone") is None


def test_a_process_group_is_read_without_its_leader():
    """A leader (standing in for the rank supervisor) with a child that makes 100 MiB resident
    and burns CPU: the reading is the child's, not the leader's nor this process's."""
    child = (
        "import sys, time\n"
        "block = bytearray(b'x') * (100 * 1024 * 1024)\n"
        "deadline = time.process_time() + 0.3\n"
        "while time.process_time() < deadline: pass\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    leader = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert leader.stdout is not None and leader.stdout.readline() == b"ready\n"
        reading = read_process_groups([leader.pid])
        assert reading is not None
        assert 100 * MIB <= reading.rss_bytes < 400 * MIB
        assert reading.cpu_seconds >= 0.3
        assert read_process_groups([]) is None
    finally:
        assert leader.stdin is not None
        leader.stdin.close()
        leader.wait(timeout=30)
    assert read_process_groups([leader.pid]) is None  # all gone


def test_samples_give_cores_in_use_between_readings_and_the_peak():
    readings = iter([Reading(10.0, 300 * MIB), Reading(13.0, 500 * MIB), Reading(13.5, 200 * MIB), None])
    clock = Clock()
    sampler = ResourceSampler(lambda: next(readings), every_seconds=2.0, clock=clock)
    assert sampler.due()
    first = sampler.sample()
    assert first is not None and CPU not in first.values  # one reading: no rate yet
    assert first.values == {CPU_SECONDS: 10.0, RSS: 300 * MIB} and first.step == int(clock.now)
    assert not sampler.due()
    clock.now += 2.0
    assert sampler.due()
    second = sampler.sample()
    assert second is not None and second.values[CPU] == 1.5  # 3 CPU seconds in 2 s
    clock.now += 5.0
    third = sampler.sample()
    assert third is not None and third.values[CPU] == pytest.approx(0.1)
    assert sampler.peak_rss_bytes == 500 * MIB
    assert sampler.sample() is None  # the job is gone


def test_a_job_cannot_report_under_the_executors_names():
    parser = MetricsParser(MetricsLimits())
    [point] = parser.feed(b'{"step": 1, "time": 1.0, "values": {"loss": 0.5, "sys.rss_bytes": 1}}\n')
    assert point.values == {"loss": 0.5}
    assert parser.dropped.count == 1 and "sys." in (parser.dropped.first or "")


def test_the_record_gets_the_larger_of_the_end_measure_and_the_samples():
    sampler = ResourceSampler(lambda: Reading(4.0, 300 * MIB), every_seconds=1.0, clock=Clock())
    assert with_samples(None, None) is None
    assert with_samples(None, sampler) is None  # nothing sampled yet
    sampler.sample()
    at_end = AttemptUsage(cpu_seconds=5.0, peak_memory_bytes=200 * MIB)  # the largest one process
    assert with_samples(at_end, sampler) == AttemptUsage(cpu_seconds=5.0, peak_memory_bytes=300 * MIB)
    # a rank killed with its supervisor has no end measure: the samples are what is known
    assert with_samples(None, sampler) == AttemptUsage(cpu_seconds=4.0, peak_memory_bytes=300 * MIB)


# the engines' stats answers (GET /containers/<id>/stats?stream=false), cut to the fields read; shaped
# as Docker's API reference documents them (no engine runs on this machine to record one)
STATS_CGROUP_V1 = {
    "cpu_stats": {"cpu_usage": {"total_usage": 1_500_000_000}, "online_cpus": 2},
    "memory_stats": {"usage": 230 * MIB, "limit": 512 * MIB, "stats": {"total_inactive_file": 20 * MIB}},
}
STATS_CGROUP_V2 = {
    "cpu_stats": {"cpu_usage": {"total_usage": 250_000_000}},
    "memory_stats": {"usage": 210 * MIB, "stats": {"inactive_file": 4 * MIB, "anon": 200 * MIB}},
}
STATS_EXITED = {"cpu_stats": {"cpu_usage": {"total_usage": 0}}, "memory_stats": {}}
# recorded from podman 4.3's Docker-compatible API (GET /v1.40/containers/<id>/stats?stream=false,
# rootful, cgroup v1), cut to the sections read: no memory_stats.stats (so no inactive file cache to
# take off: its usage is the cgroup's memory.usage_in_bytes), and an empty body once it has exited
STATS_PODMAN = {
    "cpu_stats": {
        "cpu_usage": {
            "total_usage": 898578354,
            "percpu_usage": [449934587, 448643767],
            "usage_in_kernelmode": 277981254,
            "usage_in_usermode": 620597100,
        },
        "system_cpu_usage": 49973925596418,
        "online_cpus": 2,
        "cpu": 0,
    },
    "precpu_stats": {"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0}},
    "memory_stats": {"usage": 368640, "limit": 268435456},
    "pids_stats": {"current": 1},
}


def test_an_engines_stats_read_as_docker_stats_counts_memory():
    assert stats_reading(STATS_CGROUP_V1) == Reading(cpu_seconds=1.5, rss_bytes=210 * MIB)
    assert stats_reading(STATS_CGROUP_V2) == Reading(cpu_seconds=0.25, rss_bytes=206 * MIB)
    assert stats_reading(STATS_EXITED) is None


def test_podmans_compatible_stats_read_the_same_way():
    assert stats_reading(STATS_PODMAN) == Reading(cpu_seconds=0.898578354, rss_bytes=368640)


def sent_in_an_hour(readings: Callable[[int], Reading], idle_seconds: float) -> int:
    """How many of an hour's samples (every 5 s) a job that reports nothing publishes."""
    clock = Clock()
    tick = iter(range(10**6))
    sampler = ResourceSampler(lambda: readings(next(tick)), 5.0, clock=clock, idle_seconds=idle_seconds)
    sent = 0
    for _ in range(720):
        point = sampler.sample()
        assert point is not None
        if sampler.worth_sending(point):
            sampler.sent(point)
            sent += 1
        clock.now += 5
    return sent


def test_a_steady_silent_job_publishes_a_sample_a_minute_not_every_five_seconds():
    # one busy core (5 CPU seconds per 5 s, with a little jitter) and 200 MiB, give or take 1 MiB
    def steady(i: int) -> Reading:
        return Reading(cpu_seconds=i * 5.0 + (i % 3) * 0.05, rss_bytes=200 * MIB + (i % 2) * MIB)

    assert sent_in_an_hour(steady, idle_seconds=0) == 720  # uncoalesced: every sample
    # the first, the second (sys.cpu appears), then one a minute: 61 of 720
    assert sent_in_an_hour(steady, idle_seconds=60) == 61


def test_a_sample_that_moved_is_sent_at_once():
    def growing(i: int) -> Reading:  # memory doubling every minute: every sample moves > 5 %
        return Reading(cpu_seconds=i * 5.0, rss_bytes=int(200 * MIB * 2 ** (i / 12)))

    assert sent_in_an_hour(growing, idle_seconds=60) == 720
    assert moved({CPU: 1.0, RSS: 100.0 * MIB}, {CPU: 1.5, RSS: 100.0 * MIB})  # half a core more
    assert not moved({CPU: 1.0, RSS: 100.0 * MIB}, {CPU: 1.05, RSS: 104.0 * MIB})
    assert moved({RSS: 100.0 * MIB}, {CPU: 0.2, RSS: 100.0 * MIB})  # a value appeared
