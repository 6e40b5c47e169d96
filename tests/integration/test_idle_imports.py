"""An idle service keeps the heavy libraries a rare path needs out of its memory (issue 23, the
idle footprint; docs/performance.md): MLflow until the registry registers a model, Optuna and
NumPy until a sweep asks for trials, aiohttp (nats-py's WebSocket transport) unless a ``ws://``
server is configured. Each service's entry module is imported in a fresh interpreter, as
``python -m trainyard_<service>`` does before it calls ``main()``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

HEAVY = ("mlflow", "optuna", "numpy", "pandas", "scipy", "sklearn", "aiohttp")
SERVICES = ("submission", "scheduler", "executor", "registry", "telemetry", "workflow")

PROBE = """
import sys
import trainyard_{service}.__main__
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


COHOSTED_PROBE = """
import sys
from trainyard_shared.cohost import entries
entries(["registry", "telemetry", "workflow"])
print(sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:])))
"""


def test_the_process_hosting_three_services_imports_no_heavy_library_either() -> None:
    """`trainyard up`'s co-hosted process (trainyard_shared.cohost): its three entries together."""
    done = subprocess.run(
        [sys.executable, "-c", COHOSTED_PROBE, *HEAVY], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


SPARED_THEN_LOADED = """
import sys
import trainyard_scheduler.__main__
import nats.aio.transport
spared = "aiohttp" not in sys.modules and nats.aio.transport.aiohttp is None
import aiohttp  # what MLflow or the kubernetes client would do later: loads as usual
print(spared, aiohttp.ClientSession.__name__)
"""


def test_aiohttp_is_spared_at_start_and_still_loads_for_whoever_imports_it_later() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SPARED_THEN_LOADED], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "ClientSession"]


def test_a_websocket_nats_server_keeps_nats_websocket_transport() -> None:
    probe = "import sys, trainyard_scheduler.__main__, nats.aio.transport as t; print(t.aiohttp is not None)"
    env = {**os.environ, "TRAINYARD_NATS_URL": "nats://127.0.0.1:4222, wss://nats.example:443"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"
