"""The shaping of scale.json (tests/bench/bench_scale.py), fed made-up figures: no stack, no timing."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.bench.bench_scale import TARGETS, fits, shape

pytestmark = pytest.mark.unit

IDLE = {"nats-server": 20.0, "scheduler": 60.0, "total": 80.0}


def step(records: int, listing_ms: float, restart_s: float, scheduler_mb: float) -> dict[str, Any]:
    return {
        "records": records,
        "listing": {
            "api_state_running": {"median_ms": 5.0, "rows": 0},
            "ui_jobs_page": {"median_ms": listing_ms, "rows": 50},
        },
        "restart_ready_s": restart_s,
        "rss_mb_after_restart": {
            "nats-server": 20.0,
            "scheduler": scheduler_mb,
            "total": 20.0 + scheduler_mb,
        },
    }


def test_each_step_is_judged_against_the_targets_and_growth_is_idle_to_the_last_step() -> None:
    steps = [step(100_000, 40.0, 8.0, 66.0), step(300_000, 70.0, 12.0, 90.0)]
    result = shape(dict(IDLE), steps, {"1000000": "too slow"}, {"load_average": [1.0, 1.0, 1.0]})

    assert [s["listing_met"] for s in result["steps"]] == [True, False]
    assert [s["restart_met"] for s in result["steps"]] == [True, False]
    assert result["records_measured"] == [100_000, 300_000]
    assert result["rss_growth_share_idle_to_last_step"]["scheduler"] == 0.5
    assert result["rss_growth_share_idle_to_last_step"]["nats-server"] == 0.0
    assert result["met"] == {
        "idle_total_mb": True,
        "listing_ms": False,
        "restart_ready_s": False,
        "rss_flat": False,  # the scheduler grew by half, over the share allowed
    }
    assert result["not_measured"] == {"1000000": "too slow"}
    assert result["targets"] == TARGETS and result["load_average"] == [1.0, 1.0, 1.0]


def test_a_flat_stack_within_every_target_is_met_and_no_steps_leave_the_step_targets_open() -> None:
    flat = shape(dict(IDLE), [step(100_000, 10.0, 3.0, 61.0)], {}, {})
    assert flat["met"] == {
        "idle_total_mb": True,
        "listing_ms": True,
        "restart_ready_s": True,
        "rss_flat": True,
    }

    idle_only = shape({"nats-server": 200.0, "scheduler": 200.0, "total": 400.0}, [], {"100000": "x"}, {})
    assert idle_only["met"] == {
        "idle_total_mb": False,
        "listing_ms": None,
        "restart_ready_s": None,
        "rss_flat": None,
    }
    assert idle_only["rss_growth_share_idle_to_last_step"] == {}


def test_a_step_that_would_end_after_the_deadline_says_by_how_much() -> None:
    now = time.time()
    # 100,000 more records at 1,000 a second: 100 s, plus 20 s of measuring
    assert fits(0, 100_000, 1000.0, now + 3600, overhead=20) is None
    late = fits(0, 100_000, 1000.0, now + 60, overhead=20)
    assert late is not None and 55 <= late <= 65
    assert fits(0, 100_000, None, now, overhead=20) is None  # no rate yet: the first step runs
    assert fits(0, 100_000, 1000.0, None, overhead=20) is None  # no deadline
