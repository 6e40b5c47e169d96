"""The pure parts: moving an alias forward and back, judging --if-better, and who may move what."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from trainyard_contracts.modelregistry import AliasHolder, AliasRecord, IfBetter, RegistryRequest, VersionInfo
from trainyard_registry.aliases import AliasRefused, check_expected, judge, promoted, rolled_back
from trainyard_submission.access import Forbidden
from trainyard_submission.aliasrules import DEFAULT_ALIAS_RULES, AliasRule, check_alias_change
from trainyard_submission.tokens import Principal

pytestmark = [pytest.mark.unit, pytest.mark.registry]
NOW = datetime(2026, 12, 3, tzinfo=UTC)


def record(current: int | None, *history: int) -> AliasRecord:
    return AliasRecord(
        name="m",
        alias="production",
        current=AliasHolder(version=current, set_at=NOW) if current else None,
        history=[AliasHolder(version=v, set_at=NOW) for v in history],
    )


def test_a_promotion_pushes_the_holder_and_a_rollback_pops_it_back() -> None:
    first = promoted(None, "m", "production", 1, "api", NOW)
    assert first is not None and first.current and first.current.version == 1 and first.history == []
    second = promoted(first, "m", "production", 2, "api", NOW)
    assert second is not None and [h.version for h in second.history] == [1]
    assert promoted(second, "m", "production", 2, "api", NOW) is None  # holds it already
    back = rolled_back(second, "m", "production", "api", NOW)
    assert back.current and back.current.version == 1 and back.history == []
    assert back.last_action == "rollback" and not back.applied


def test_rollback_without_a_previous_holder_or_alias_is_refused_clearly() -> None:
    with pytest.raises(AliasRefused) as none:
        rolled_back(None, "m", "production", "api", NOW)
    assert none.value.status == 404
    with pytest.raises(AliasRefused) as alone:
        rolled_back(record(3), "m", "production", "api", NOW)
    assert alone.value.status == 409 and "no previous holder" in alone.value.message


def test_an_expected_revision_that_moved_is_a_409() -> None:
    check_expected(None, 7, record(1))
    check_expected(7, 7, record(1))
    with pytest.raises(AliasRefused) as moved:
        check_expected(5, 7, record(2, 1))
    assert moved.value.status == 409 and "now 7: v2" in moved.value.message


@pytest.mark.parametrize(
    ("rule", "candidate", "holder", "promote"),
    [
        (IfBetter(metric="acc"), 0.91, 0.90, True),
        (IfBetter(metric="acc"), 0.90, 0.90, False),  # equal is not better
        (IfBetter(metric="acc", min_delta=0.02), 0.91, 0.90, False),
        (IfBetter(metric="loss", lower_is_better=True), 0.2, 0.3, True),
        (IfBetter(metric="loss", lower_is_better=True), 0.4, 0.3, False),
    ],
)
def test_if_better_judges_by_the_metric_direction_and_delta(rule, candidate, holder, promote) -> None:
    metric = rule.metric
    verdict = judge(rule, 2, {metric: candidate}, 1, {metric: holder})
    assert verdict.promote is promote
    assert ("is better" if promote else "is not better") in verdict.reason


def test_if_better_without_the_metric_on_the_candidate_is_refused_and_a_holder_without_it_loses() -> None:
    with pytest.raises(AliasRefused) as missing:
        judge(IfBetter(metric="acc"), 2, {}, 1, {"acc": 0.5})
    assert missing.value.status == 422
    assert judge(IfBetter(metric="acc"), 2, {"acc": 0.1}, 1, {}).promote
    assert judge(IfBetter(metric="acc"), 2, {"acc": 0.1}, None, {}).promote


def test_latest_and_version_references_are_not_aliases() -> None:
    for alias in ("latest", "v3"):
        with pytest.raises(ValueError, match="reference to a version"):
            RegistryRequest(name="m", alias=alias)
    assert RegistryRequest(name="m", alias="vnext").alias == "vnext"


def version(queue: str | None, number: int = 1) -> VersionInfo:
    return VersionInfo(name="m", version=number, queue=queue)


TEAM_A = Principal("aaaaaaaaaaaa", admin=False, team="team-a")
ADMIN = Principal("bbbbbbbbbbbb", admin=True, team=None)


def test_by_default_production_is_the_admins_and_other_aliases_the_owning_teams() -> None:
    rules = DEFAULT_ALIAS_RULES
    check_alias_change(ADMIN, rules, "m", "production", version("team-b"), None)
    with pytest.raises(Forbidden, match="admin"):
        check_alias_change(TEAM_A, rules, "m", "production", version("team-a"), None)
    check_alias_change(TEAM_A, rules, "m", "staging", version("team-a"), version("team-a", 2))
    with pytest.raises(Forbidden, match="owning team"):
        check_alias_change(TEAM_A, rules, "m", "staging", version("team-b"), None)
    with pytest.raises(Forbidden):  # displacing another team's holder
        check_alias_change(TEAM_A, rules, "m", "staging", version("team-a"), version("team-b", 2))


def test_rules_are_tried_in_order_and_name_a_team() -> None:
    rules = [
        AliasRule(model="fraud-*", alias="production", allow=["team:risk"]),
        *DEFAULT_ALIAS_RULES,
    ]
    risk = Principal("cccccccccccc", admin=False, team="risk")
    check_alias_change(risk, rules, "fraud-xgb", "production", version("team-a"), None)
    with pytest.raises(Forbidden):
        check_alias_change(risk, rules, "churn", "production", version("risk"), None)
    with pytest.raises(ValueError, match="expected admin, owner or team"):
        AliasRule(allow=["everyone"])
