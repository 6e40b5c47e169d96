"""The simulator drives the real policy in simulated time: outcomes that could only come from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trainyard_contracts.queues import QueueConfig
from trainyard_scheduler.simulator import (
    Arrivals,
    Gang,
    NodeType,
    Shape,
    Workload,
    WorkloadError,
    default_workload,
    jain,
    load_workload,
    simulate,
)

pytestmark = pytest.mark.unit


def small_default() -> Workload:
    return default_workload(6).model_copy(update={"duration": 900})


def test_same_seed_same_outcome_and_sane_figures():
    a, b = simulate(small_default(), seed=3), simulate(small_default(), seed=3)
    for report in (a, b):
        report.pop("decision_ms")
    assert a == b
    assert a["jobs"]["submitted"] > 0 and a["jobs"]["started"] > 0
    assert 0 < a["utilisation"]["cpu"] <= 1
    assert set(a["wait_seconds"]) == {"prod", "research", "batch"}
    assert simulate(small_default(), seed=4)["jobs"] != a["jobs"]


def test_large_gang_is_not_starved_by_a_stream_of_small_jobs():
    """Gangs that need the whole cluster, while small jobs keep it about 75% busy, so it is never
    empty by chance: the reservation holds the room as it frees up, so every gang starts."""
    workload = Workload(
        nodes=[NodeType(count=4, cpu=8, memory=65536)],
        queues=[QueueConfig(name="small"), QueueConfig(name="big")],
        arrivals=[
            Arrivals(
                queue="small",
                rate=0.2,
                shapes=[Shape(cpu=1, memory=1024)],
                duration_mean=120,
                duration_max=300,
            ),
            Arrivals(
                queue="big",
                rate=0.004,
                shapes=[Shape(cpu=8, memory=8192)],
                duration_mean=300,
                gang=Gang(probability=1.0, replicas=[4]),
            ),
        ],
        duration=1800,
        cycle=5,
    )
    report = simulate(workload, seed=2)
    big = report["wait_seconds"]["big"]
    assert big["submitted"] >= 3 and big["jobs"] == big["submitted"]
    assert report["wait_seconds"]["small"]["jobs"] > 100


def test_equal_queues_share_fairly():
    workload = Workload(
        nodes=[NodeType(count=4, cpu=8, memory=65536)],
        queues=[QueueConfig(name="a"), QueueConfig(name="b")],
        arrivals=[
            Arrivals(queue=q, rate=0.2, shapes=[Shape(cpu=1, memory=1024)], duration_mean=120)
            for q in ("a", "b")
        ],
        duration=1800,
    )
    report = simulate(workload, seed=5)
    assert report["fairness_jain"] > 0.95


def test_jain_index():
    assert jain([1.0, 1.0, 1.0]) == 1.0
    assert jain([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)


def test_workload_file_is_validated_with_a_clear_error(tmp_path: Path):
    good = tmp_path / "w.yaml"
    good.write_text(
        "nodes: [{count: 2, cpu: 8, memory: 16384}]\n"
        "queues: [{name: a, weight: 2}]\n"
        "arrivals: [{queue: a, rate: 0.1}]\n"
        "duration: 300\n"
    )
    assert simulate(load_workload(good), seed=1)["nodes"] == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "nodes: [{count: 0, cpu: 8, memory: 1}]\nqueues: [{name: a}]\narrivals: [{queue: b, rate: 1}]\n"
    )
    with pytest.raises(WorkloadError) as err:
        load_workload(bad)
    assert "nodes.0.count" in str(err.value)
    bad.write_text(
        "nodes: [{count: 1, cpu: 8, memory: 1}]\nqueues: [{name: a}]\narrivals: [{queue: b, rate: 1}]\n"
    )
    with pytest.raises(WorkloadError, match="not configured: b"):
        load_workload(bad)


def test_simulator_imports_no_broker():
    code = (
        "import trainyard_scheduler.simulator, sys; "
        "assert not any(m.startswith(('faststream','nats')) for m in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
