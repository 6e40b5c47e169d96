"""Aliases as version control, the pure part: moving an alias forward, back, or only when better.

An alias record holds its holder and the holders before it (newest last). A promotion pushes the
holder onto the history; a rollback pops the last previous holder back into place, so rolling back
twice goes two steps back. What was rolled back from is not kept in the record: the audit stream
keeps every change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from trainyard_contracts.modelregistry import (
    MAX_ALIAS_HISTORY,
    AliasHolder,
    AliasRecord,
    AliasState,
    IfBetter,
)


class AliasRefused(Exception):
    """A request that cannot be done as asked: ``status`` and ``field`` say how to answer it."""

    def __init__(self, status: int, field: str, message: str) -> None:
        self.status, self.field, self.message = status, field, message
        super().__init__(message)


def key(name: str, alias: str) -> str:
    return f"{name}.{alias}"


def state_of(record: AliasRecord | None, name: str, alias: str, revision: int) -> AliasState:
    """The alias as answered: its holder's version, set_at and by (none: never set, or cleared)."""
    if record is None:
        return AliasState(name=name, alias=alias, revision=revision)
    holder = record.current.model_dump() if record.current is not None else {}
    return AliasState(name=name, alias=alias, history=record.history, revision=revision, **holder)


def check_expected(expected: int | None, revision: int, record: AliasRecord | None) -> None:
    """The caller decided on ``expected``; the alias has moved since (or was never there): 409."""
    if expected is None or expected == revision:
        return
    now = f"v{record.current.version}" if record and record.current else "unset"
    raise AliasRefused(
        409,
        "expected_revision",
        f"the alias changed since it was read (revision {expected}, now {revision}: {now}); "
        "look again (`trainyard models show NAME@ALIAS`) and retry",
    )


def promoted(
    record: AliasRecord | None, name: str, alias: str, version: int, by: str, now: datetime
) -> AliasRecord | None:
    """The record with ``version`` holding the alias; None when it holds it already."""
    if record is not None and record.current is not None and record.current.version == version:
        return None
    history = list(record.history) if record is not None else []
    if record is not None and record.current is not None:
        history.append(record.current)
    return AliasRecord(
        name=name,
        alias=alias,
        current=AliasHolder(version=version, set_at=now, by=by),
        history=history[-MAX_ALIAS_HISTORY:],
        applied=False,
        last_action="promote",
    )


def rolled_back(record: AliasRecord | None, name: str, alias: str, by: str, now: datetime) -> AliasRecord:
    """The record with the previous holder back in place; refused when there is none."""
    if record is None or record.current is None:
        raise AliasRefused(404, "alias", f"model {name!r} has no alias {alias!r}: nothing to roll back")
    if not record.history:
        raise AliasRefused(
            409,
            "alias",
            f"{name}@{alias} (v{record.current.version}) has no previous holder to roll back to",
        )
    previous = record.history[-1]
    return AliasRecord(
        name=name,
        alias=alias,
        current=AliasHolder(version=previous.version, set_at=now, by=by),
        history=record.history[:-1],
        applied=False,
        last_action="rollback",
    )


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str


def judge(
    rule: IfBetter,
    candidate: int,
    candidate_metrics: dict[str, float],
    holder: int | None,
    holder_metrics: dict[str, float],
) -> Verdict:
    """Whether ``candidate`` beats ``holder`` on ``rule.metric`` by more than ``rule.min_delta``.

    A candidate without the metric is refused (422: nothing to judge it by); a holder without it
    is beaten (it cannot show it is better)."""
    metric = rule.metric
    value = candidate_metrics.get(metric)
    if value is None or not math.isfinite(value):
        raise AliasRefused(422, "if_better.metric", f"v{candidate} has no metric {metric!r} to compare with")
    if holder is None:
        return Verdict(True, f"no current holder: v{candidate} ({metric}={value:g}) promoted")
    if holder == candidate:
        return Verdict(False, f"v{candidate} already holds the alias")
    held = holder_metrics.get(metric)
    if held is None or not math.isfinite(held):
        return Verdict(
            True, f"the holder v{holder} has no {metric}; v{candidate} ({metric}={value:g}) promoted"
        )
    gain = held - value if rule.lower_is_better else value - held
    direction = "lower" if rule.lower_is_better else "higher"
    compared = f"{metric} {value:g} vs {held:g} of v{holder} ({direction} is better"
    compared += f", min delta {rule.min_delta:g})" if rule.min_delta else ")"
    if gain > rule.min_delta:
        return Verdict(True, f"v{candidate} is better: {compared}")
    return Verdict(False, f"v{candidate} is not better: {compared}")
