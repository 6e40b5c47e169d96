"""What counts as 'the same job' for an idempotency key (pure)."""

from __future__ import annotations

import pytest

from trainyard_contracts import parse_spec
from trainyard_submission.samespec import spec_differences

pytestmark = pytest.mark.unit

BASE = "name: a\ncommand: [python, t.py]\nsource: {repo: 'https://example.com/r.git', ref: main}\n"


def test_what_submission_adds_is_no_difference():
    submitted = parse_spec(BASE + "env: {KEY: s3cret}\nsecret_env: [KEY]\n")
    stored = submitted.model_copy(
        update={"source": submitted.source.model_copy(update={"commit": "a" * 40})}  # resolved later
    )
    assert spec_differences(submitted, stored) == []


def test_every_other_field_that_differs_is_named():
    stored = parse_spec(BASE)
    assert spec_differences(parse_spec(BASE + "priority: 0\n"), stored) == []  # a default said aloud
    other = parse_spec(BASE.replace("main", "dev") + "labels: {x: y}\n")
    assert spec_differences(other, stored) == ["labels", "source"]
