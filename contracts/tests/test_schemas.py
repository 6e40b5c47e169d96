"""The checked-in JSON Schema files match the models (run `make schemas` when this fails)."""

from __future__ import annotations

import pytest

from trainyard_contracts.schemas import DEFAULT_DIR, render

pytestmark = pytest.mark.unit


def test_schema_files_are_fresh():
    expected = render()
    stale = [
        name
        for name, text in expected.items()
        if not (DEFAULT_DIR / name).exists() or (DEFAULT_DIR / name).read_text() != text
    ]
    assert not stale, f"stale schemas {stale}: run `make schemas` and commit contracts/schemas/"


def test_contracts_import_no_broker():
    import subprocess
    import sys

    code = (
        "import sys, trainyard_contracts, trainyard_contracts.schemas;"
        "bad=[m for m in sys.modules if m.split('.')[0] in ('nats','faststream')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
