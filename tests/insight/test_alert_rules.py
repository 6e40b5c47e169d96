"""The alert rules (deploy/prometheus/rules) pass their promtool unit tests, and Prometheus' config
that loads them is valid with them (rule files included).

promtool comes with Debian's prometheus package; .ci/run installs it, so under CI a missing promtool
fails instead of skipping."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.insight, pytest.mark.unit]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules"
UNIT_TESTS = Path(__file__).parent / "alerts"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("promtool is not installed: CI runs these tests (.ci/run installs prometheus)")
    pytest.skip("promtool not installed (apt-get install -y prometheus)")


def run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=120, check=False)


def test_promtool_unit_tests_of_the_alert_rules_pass(promtool):
    tests = sorted(UNIT_TESTS.glob("*.test.yml"))
    assert tests
    done = run(promtool, "test", "rules", *map(str, tests), cwd=UNIT_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_unit_test_that_sees_it_fire(promtool):
    alerts = {
        rule["alert"]
        for path in RULES.glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    firing = {
        case["alertname"]
        for path in UNIT_TESTS.glob("*.test.yml")
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {"TrainyardQueueStuck", "TrainyardHighFailureRate", "TrainyardExecutorLost"} <= alerts
    assert alerts <= firing, f"alerts no unit test sees firing: {sorted(alerts - firing)}"


def test_a_wrong_expectation_fails(promtool, tmp_path):
    """The guard itself: promtool fails a unit test whose alert does not fire as written."""
    case = yaml.safe_load((UNIT_TESTS / "trainyard.test.yml").read_text())
    case["rule_files"] = [str(path) for path in sorted(RULES.glob("*.yml"))]
    case["tests"] = case["tests"][:1]
    case["tests"][0]["alert_rule_test"][-1]["exp_alerts"][0]["exp_labels"]["queue"] = "cpu"
    broken = tmp_path / "broken.test.yml"
    broken.write_text(yaml.safe_dump(case))
    done = run(promtool, "test", "rules", str(broken), cwd=tmp_path)
    assert done.returncode != 0 and "TrainyardQueueStuck" in done.stdout + done.stderr


def test_prometheus_config_with_its_rule_files_is_valid(promtool, tmp_path):
    """prometheus.yml names the rules where compose mounts them; pointed at the repository's
    folder, promtool checks the config and every rule file it loads."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    config["rule_files"] = [str(RULES / "*.yml")]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    done = run(promtool, "check", "config", str(local))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rules found" in done.stdout, done.stdout
