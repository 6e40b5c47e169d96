"""No log call's ``extra`` names an attribute a LogRecord already has: logging raises KeyError
("Attempt to overwrite 'name' in LogRecord") at the call, and only when that level is enabled, so
the path that logs fails where logging is on (CI at INFO) and passes where it is off."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
RESERVED = set(vars(logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None))) | {"message", "asctime"}


def extras_keys(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg == "extra" and isinstance(keyword.value, ast.Dict):
                    for key in keyword.value.keys:
                        if isinstance(key, ast.Constant) and isinstance(key.value, str):
                            found.append((node.lineno, key.value))
    return found


def test_no_log_extra_overwrites_a_log_record_attribute() -> None:
    clashes = [
        f"{path.relative_to(ROOT)}:{line}: {key}"
        for folder in ("services", "shared", "client", "contracts")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if ".venv" not in path.parts
        for line, key in extras_keys(ast.parse(path.read_text(), str(path)))
        if key in RESERVED
    ]
    assert clashes == []


def test_the_check_sees_a_clash() -> None:
    assert extras_keys(ast.parse('log.info("x", extra={"name": 1, "job_id": 2})')) == [
        (1, "name"),
        (1, "job_id"),
    ]
