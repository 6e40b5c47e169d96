"""docs/architecture.md names real files: every module in its table of services exists.

The page is where a newcomer looks first; a module renamed or split without the page following
would send them to nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| (\w+) \|(.*)\|\s*$")
NAME = re.compile(r"`([\w/]+(?:\.py|/))`")


def named_modules() -> list[tuple[str, str]]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text[text.index("| service | entry |") :]
    rows = [ROW.match(line) for line in table.splitlines()[2:] if line.startswith("| ")]
    return [(m.group(1), name) for m in rows if m for name in NAME.findall(m.group(2))]


def test_the_table_names_every_service_and_some_modules() -> None:
    named = named_modules()
    services = {service for service, _ in named}
    assert services == {p.parent.name for p in ROOT.glob("services/*/pyproject.toml")}
    assert len(named) > 20


@pytest.mark.parametrize(("service", "name"), named_modules())
def test_each_module_the_page_names_exists(service: str, name: str) -> None:
    src = ROOT / "services" / service / "src"
    package = src / f"trainyard_{service}"
    wanted = name.rstrip("/")
    found = (src / wanted).exists() or any(
        p.relative_to(package).as_posix().endswith(wanted) for p in package.rglob("*")
    )
    assert found, f"docs/architecture.md names {name} for {service}, which is not under {package}"
