"""Who may move which model alias, and who may read a model version: pure rules over a principal.

The rules are the submission service's setting ``TRAINYARD_SUBMISSION_ALIAS_RULES`` (JSON): a list
of ``{"model": PATTERN, "alias": PATTERN, "allow": [...]}`` tried in order, the first whose model
and alias patterns (shell-style, ``*`` and ``?``) match deciding. ``allow`` holds ``owner`` (the
team whose queue made the version, and the current holder's, when it is another version), and
``team:<name>`` (that team, whatever it owns). An admin token may move every alias; a rule that
says only ``admin`` allows no team. With no rule matching, only an admin may.

The default: ``production`` of every model is the admin's alone; every other alias its owner's
(docs/models.md).
"""

from __future__ import annotations

import fnmatch

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trainyard_contracts.modelregistry import VersionInfo
from trainyard_submission.access import Forbidden
from trainyard_submission.tokens import Principal


class AliasRule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field("*", min_length=1, max_length=128, description="model name pattern (* and ?)")
    alias: str = Field("*", min_length=1, max_length=63, description="alias pattern (* and ?)")
    allow: list[str] = Field(description="admin, owner, or team:<name>")

    @field_validator("allow")
    @classmethod
    def _known(cls, allow: list[str]) -> list[str]:
        for who in allow:
            if who not in ("admin", "owner") and not (who.startswith("team:") and len(who) > 5):
                raise ValueError(f"{who!r}: expected admin, owner or team:<name>")
        return allow

    def matches(self, name: str, alias: str) -> bool:
        return fnmatch.fnmatchcase(name, self.model) and fnmatch.fnmatchcase(alias, self.alias)

    def describe(self) -> str:
        who = ", ".join("the owning team" if w == "owner" else w for w in self.allow)
        admin = "" if "admin" in self.allow else "admin, "
        return f"{admin}{who} (rule model={self.model!r} alias={self.alias!r})"


DEFAULT_ALIAS_RULES = (
    AliasRule(model="*", alias="production", allow=["admin"]),
    AliasRule(model="*", alias="*", allow=["owner"]),
)


def may_read_version(principal: Principal, version: VersionInfo) -> bool:
    """As model listings: a team reads its own queue's versions, the admin every one."""
    return principal.admin or (version.queue is not None and version.queue == principal.team)


def check_alias_change(
    principal: Principal,
    rules: tuple[AliasRule, ...] | list[AliasRule],
    name: str,
    alias: str,
    target: VersionInfo,
    holder: VersionInfo | None,
) -> None:
    """Raise Forbidden unless ``principal`` may move ``name@alias`` from ``holder`` to ``target``."""
    if principal.admin:
        return
    rule = next((r for r in rules if r.matches(name, alias)), None)
    team = principal.team
    if rule is not None:
        for who in rule.allow:
            if who == f"team:{team}":
                return
            owns_holder = holder is None or holder.queue == team
            if who == "owner" and target.queue == team and owns_holder:
                return
    allowed = rule.describe() if rule is not None else "admin only (no rule matches)"
    raise Forbidden(
        f"a token of team {team!r} may not move {name}@{alias} to v{target.version}: "
        f"this alias may be moved by {allowed}"
    )
