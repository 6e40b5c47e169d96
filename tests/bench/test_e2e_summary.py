"""Issue 23's summary of e2e.json (tests/bench/e2e_summary.py): the five keys shaped from the parts
``bench_e2e.py`` measured. Pure shaping: made-up figures in, no timing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.bench.e2e_summary import TARGETS, summarize

pytestmark = pytest.mark.unit

KEYS = ["local_drain_rate", "docker_vs_engine", "podman_vs_engine", "sustained_60s_rate", "p99_ms_at_500"]
CONDITIONS = {
    "before": {"load_avg": [3.1, 3.0, 2.9], "speed_ms": 8.5},
    "after": {"load_avg": [3.5, 3.1, 3.0]},
}


def rate(via: str, offered: float, p99: float) -> dict[str, Any]:
    return {
        "via": via,
        "offered_rate": offered,
        "seconds": 10.0,
        "achieved_rate": offered,
        "p50_ms": 1.0,
        "p99_ms": p99,
        "lost": 0,
        "duplicated": 0,
    }


def measured(**parts: Any) -> dict[str, Any]:
    return {
        "runs": [
            {"backend": "local", "rates": [rate("bus", 500, 9000.0)], "drains": []},
            {
                "backend": "noop",
                "conditions": CONDITIONS,
                "rates": [rate("http", 500, 70.0), rate("bus", 200, 20.0), rate("bus", 500, 294.25)],
                "drains": [],
            },
        ],
        "parts": parts,
    }


def drain(rate_per_s: float, lost: int = 0, duplicated: int = 0, n: int = 1000) -> dict[str, Any]:
    return {
        "drain_jobs": n,
        "drain_seconds": n / rate_per_s,
        "drain_rate": rate_per_s,
        "succeeded": n - lost,
        "lost": lost,
        "duplicated": duplicated,
    }


def engine(trainyard_rate: float, sequential: float, concurrent: float) -> dict[str, Any]:
    return {
        "image": "trainyard-test/busybox:1",
        "trainyard": drain(trainyard_rate, n=200),
        "engine": {"sequential": {"rate": sequential}, "concurrent": {"rate": concurrent}},
        "conditions": CONDITIONS,
    }


def test_every_key_has_figure_unit_target_met_and_how_measured() -> None:
    summary = summarize(measured(local={"drain": drain(450.0), "conditions": CONDITIONS}))
    assert list(summary) == KEYS
    for key, figure in summary.items():
        assert set(figure) >= {"value", "unit", "target", "met", "measured"}, key
        assert figure["target"] == TARGETS[key]["target"]
        assert "shortcut" in figure["measured"] and "path" in figure["measured"]
    assert summary["local_drain_rate"]["measured"]["conditions"] == CONDITIONS


@pytest.mark.parametrize(
    ("figure", "lost", "met"), [(450.0, 0, True), (400.0, 0, True), (92.2, 0, False), (450.0, 1, False)]
)
def test_local_drain_is_met_at_400_per_second_with_nothing_lost(figure: float, lost: int, met: bool) -> None:
    got = summarize(measured(local={"drain": drain(figure, lost=lost)}))["local_drain_rate"]
    assert (got["value"], got["met"]) == (figure, met)


def test_engine_ratio_is_the_sequential_engine_rate_over_trainyards() -> None:
    summary = summarize(measured(docker=engine(2.0, 3.0, 8.0), podman=engine(4.0, 4.4, 5.0)))
    docker, podman = summary["docker_vs_engine"], summary["podman_vs_engine"]
    assert (docker["value"], docker["met"]) == (1.5, False)
    assert docker["measured"]["ratio_to_concurrent"] == 4.0
    assert docker["measured"]["compared"] == "sequential"
    assert (podman["value"], podman["met"]) == (1.1, True)


def test_containers_that_failed_do_not_count_and_the_target_is_not_met() -> None:
    part = engine(2.0, 1.0, 1.0)
    part["trainyard"] |= {"succeeded": 100, "not_succeeded": {"failed: engine error": 100}}
    docker = summarize(measured(docker=part))["docker_vs_engine"]
    assert docker["measured"]["trainyard_rate"] == 1.0
    assert (docker["value"], docker["met"]) == (1.0, False)
    assert docker["measured"]["not_succeeded"] == {"failed: engine error": 100}


def test_an_engine_not_reachable_gives_no_figure_and_says_why() -> None:
    summary = summarize(measured(podman={"skipped": "no `podman` CLI on PATH"}))
    podman = summary["podman_vs_engine"]
    assert (podman["value"], podman["met"]) == (None, None)
    assert podman["measured"]["skipped"] == "no `podman` CLI on PATH"
    assert summary["docker_vs_engine"]["measured"]["skipped"].startswith("not measured")


@pytest.mark.parametrize(
    ("achieved", "lost", "met"), [(1000.0, 0, True), (515.3, 0, False), (1000.0, 3, False)]
)
def test_sustained_rate_needs_the_rate_and_nothing_lost(achieved: float, lost: int, met: bool) -> None:
    run = rate("bus", 1000, 7911.0) | {"achieved_rate": achieved, "lost": lost, "seconds": 60.0}
    got = summarize(measured(sustained={"rate": run}))["sustained_60s_rate"]
    assert (got["value"], got["met"], got["measured"]["lost"]) == (achieved, met, lost)


def test_p99_at_500_is_the_noop_bus_run_of_runs() -> None:
    got = summarize(measured())["p99_ms_at_500"]
    assert (got["value"], got["met"]) == (294.25, False)
    assert got["measured"]["conditions"] == CONDITIONS


def test_p99_at_500_missing_from_runs_says_how_to_measure_it() -> None:
    got = summarize({"runs": [{"backend": "noop", "rates": [rate("bus", 200, 20.0)]}]})["p99_ms_at_500"]
    assert got["value"] is None and "--rates 500" in got["measured"]["skipped"]
