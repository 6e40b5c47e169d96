"""An idle service keeps the heavy libraries a rare path needs out of its memory (issue 23, the
idle footprint; docs/performance.md): MLflow until the registry registers a model, Optuna and
NumPy until a sweep asks for trials. Each service's app is imported in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

HEAVY = ("mlflow", "optuna", "numpy", "pandas", "scipy", "sklearn")
SERVICES = ("submission", "scheduler", "executor", "registry", "telemetry", "workflow")

PROBE = """
import sys
import trainyard_{service}.app
print(sorted({{m.split(".")[0] for m in sys.modules}} & set(sys.argv[1:])))
"""


@pytest.mark.parametrize("service", SERVICES)
def test_a_services_app_imports_no_heavy_library_it_needs_only_on_a_rare_path(service: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(service=service), *HEAVY],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
