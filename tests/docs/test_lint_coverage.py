"""`make lint` type-checks every package of the workspace, and mypy reads each one from source;
`make install` compiles every package's bytecode.

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


def dry_run(*make_args: str) -> list[str]:
    """The commands make would run (``-n``: nothing is executed)."""
    return subprocess.run(
        ["make", "--no-print-directory", "-n", "-C", str(ROOT), *make_args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()


def arguments_after(command: str, lines: list[str]) -> list[str]:
    found = [line for line in lines if f" {command} " in f" {line} "]
    assert len(found) == 1, f"expected one {command} command, got {found}"
    words = shlex.split(found[0])
    return [w for w in words[words.index(command) + 1 :] if not w.startswith("-")]


def mypy_arguments() -> list[str]:
    """The paths `make lint` hands to mypy."""
    return arguments_after("mypy", dry_run("lint"))


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


def test_make_install_compiles_the_bytecode_of_the_dependencies_and_of_every_package() -> None:
    """With bytecode written at install, the first CLI call loads .pyc (issue 16: start-up time;
    this environment sets PYTHONDONTWRITEBYTECODE, so nothing else would ever write it)."""
    lines = dry_run("-B", ".venv/.installed")  # -B: as on a fresh clone, whatever is installed
    assert any(" sync " in line and "--compile-bytecode" in line.split() for line in lines), lines
    compiled = {path.rstrip("/") for path in arguments_after("compileall", lines)}
    missing = workspace_sources() - compiled
    assert not missing, f"`make install` does not compile {sorted(missing)}"
