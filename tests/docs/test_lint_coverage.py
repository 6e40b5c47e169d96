"""`make lint` type-checks every package of the workspace, and mypy reads each one from source.

A package left out of the mypy run is silently unchecked; one left out of `mypy_path` is read from
its installed copy, which has no py.typed, so every import of it becomes Any. Both happened before
(issue 15: the client, the executor and the workflow service were outside `make lint`).
"""

from __future__ import annotations

import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def workspace_sources() -> set[str]:
    """Each workspace member's `src` folder, relative to the root (members as uv reads them)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    members = config["tool"]["uv"]["workspace"]["members"]
    packages = {p.parent for pattern in members for p in ROOT.glob(f"{pattern}/pyproject.toml")}
    return {(package / "src").relative_to(ROOT).as_posix() for package in packages}


def mypy_arguments() -> list[str]:
    """The paths `make lint` hands to mypy, read from make's dry run (nothing is executed)."""
    dry_run = subprocess.run(
        ["make", "--no-print-directory", "-n", "-C", str(ROOT), "lint"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [line for line in dry_run.splitlines() if " mypy " in f"{line} "]
    assert len(lines) == 1, f"expected one mypy command in `make -n lint`, got {lines}"
    words = shlex.split(lines[0])
    return words[words.index("mypy") + 1 :]


def test_every_workspace_package_has_a_src_folder() -> None:
    sources = workspace_sources()
    assert {"contracts/src", "shared/src", "client/src", "services/scheduler/src"} <= sources
    assert all((ROOT / source).is_dir() for source in sources)


def test_make_lint_runs_mypy_over_every_package() -> None:
    checked = {argument.rstrip("/") for argument in mypy_arguments() if not argument.startswith("-")}
    missing = workspace_sources() - checked
    assert not missing, f"`make lint` does not type-check {sorted(missing)}"


def test_mypy_reads_every_package_from_source() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mypy_path = set(config["tool"]["mypy"]["mypy_path"].split(":"))
    missing = workspace_sources() - mypy_path
    assert not missing, f"[tool.mypy] mypy_path lacks {sorted(missing)}: they would be read as Any"
