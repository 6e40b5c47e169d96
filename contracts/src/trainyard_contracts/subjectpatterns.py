"""NATS subject patterns (``*`` one token, ``>`` the rest): matching, containment, and which
patterns an operator may let triggers read (docs/workflows.md, "Triggers"; docs/security.md)."""

from __future__ import annotations

import re

_TOKEN = re.compile(r"^[A-Za-z0-9_$-]+$|^\*$|^>$")
INTERNAL_FIRST_TOKENS = ("$", "_INBOX", "_R_")  # JetStream API, KV, replies: never a trigger's


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether the concrete ``subject`` is one ``pattern`` names."""
    want, got = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(got) > i
        if i >= len(got) or (token != "*" and token != got[i]):
            return False
    return len(got) == len(want)


def pattern_within(inner: str, outer: str) -> bool:
    """Whether every subject ``inner`` names is one ``outer`` names too."""
    a, b = inner.split("."), outer.split(".")
    for i, token in enumerate(b):
        if token == ">":
            return len(a) > i
        if i >= len(a) or a[i] == ">":
            return False
        if token != "*" and (a[i] == "*" or a[i] != token):
            return False
    return len(a) == len(b)


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is no well-formed subject pattern, or None."""
    tokens = pattern.split(".")
    if not pattern or len(pattern) > 256 or not all(_TOKEN.match(t) for t in tokens):
        return "expected dot-separated tokens of letters, digits, _ $ -, or the wildcards * and >"
    if ">" in tokens[:-1]:
        return "> stands only as the last token"
    return None


def foreign_pattern_problem(pattern: str, prefix: str) -> str | None:
    """Why an operator may not allow ``pattern`` for triggers, or None: it must be well formed,
    start with a literal token (no ``>`` or ``*.>`` that would read the whole bus), and name
    nothing internal: not the installation's own ``<prefix>.`` subjects (their events are in other
    streams), not ``$JS``/``$KV`` and other ``$`` subjects, not inboxes."""
    problem = pattern_problem(pattern)
    if problem:
        return problem
    first = pattern.split(".")[0]
    if first in ("*", ">"):
        return "the first token must be a literal (a wildcard there would read the whole bus)"
    if first == prefix:
        return f"{prefix!r} is this installation's prefix: its subjects are internal"
    if first.startswith(INTERNAL_FIRST_TOKENS):
        return "subjects starting with $, _INBOX or _R_ are internal to NATS"
    return None


__all__ = [
    "foreign_pattern_problem",
    "pattern_problem",
    "pattern_within",
    "subject_matches",
]
