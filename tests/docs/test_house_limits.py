"""The house's limits (issue 15), kept: no module over 600 lines and no function over 80 in the
source of services/, shared/ and client/. A room that grows past them is split before it lands."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SOURCE = [*ROOT.glob("services/*/src"), ROOT / "shared" / "src", ROOT / "client" / "src"]
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def modules() -> list[Path]:
    return sorted(p for root in SOURCE for p in root.rglob("*.py") if "generated" not in p.parts)


def test_the_source_is_where_the_limits_look() -> None:
    assert len(modules()) > 200  # a moved tree would pass every limit by finding nothing


def test_no_module_is_over_600_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_is_over_80_lines() -> None:
    long: dict[str, int] = {}
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = lines
    assert long == {}
