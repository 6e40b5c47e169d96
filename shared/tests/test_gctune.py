"""A service process's garbage collector: start-up frozen, the young generation collected less
often (docs/performance.md, "Garbage collection"). Each case runs in its own interpreter, so the
test process's own collector is left as it was."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

PROBE = """
import gc, json, sys
from trainyard_shared.gctune import tune_gc
before = gc.get_threshold()
tune_gc(int(sys.argv[1]))
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def probe(young: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(young)], capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(done.stdout)


def test_a_service_freezes_its_start_up_and_collects_the_young_generation_less_often():
    seen = probe(50_000)
    assert seen["after"] == [50_000, seen["before"][1], seen["before"][2]]
    assert seen["frozen"] > 1000  # the modules imported so far, out of every later scan


def test_zero_leaves_pythons_collector_as_it_is():
    seen = probe(0)
    assert seen["after"] == seen["before"] and seen["frozen"] == 0


def test_the_setting_comes_from_the_environment(monkeypatch):
    from trainyard_shared.settings import CommonSettings

    assert CommonSettings().gc_young_threshold == 50_000
    monkeypatch.setenv("TRAINYARD_GC_YOUNG_THRESHOLD", "0")
    assert CommonSettings().gc_young_threshold == 0
