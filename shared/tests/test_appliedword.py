"""The scheduler's applied word: the record and its revision when they fit, else the bare job id."""

from __future__ import annotations

import pytest

from trainyard_contracts import JobSpec, lifecycle
from trainyard_contracts._time import utcnow
from trainyard_shared import appliedword

pytestmark = pytest.mark.unit


def test_a_record_goes_with_its_revision_and_comes_back_as_it_went() -> None:
    record = lifecycle.new_record("j1", JobSpec(name="w", command=["true"]), utcnow(), None)
    body, headers = appliedword.encode("j1", (record, 7), 1024 * 1024)
    assert headers is not None and body == record.model_dump_json().encode()
    assert appliedword.decode(body, headers) == appliedword.AppliedWord("j1", body, 7)


def test_a_record_that_does_not_fit_with_its_headers_goes_as_the_bare_job_id() -> None:
    record = lifecycle.new_record("j1", JobSpec(name="w", command=["true"]), utcnow(), None)
    body, headers = appliedword.encode("j1", (record, 7), 1024 * 1024)
    assert headers is not None
    exact = len(body) + appliedword.header_bytes(headers)  # the headers count against max_payload
    assert appliedword.encode("j1", (record, 7), exact)[1] is not None
    assert appliedword.encode("j1", (record, 7), exact - 1) == (b"j1", None)
    assert appliedword.encode("j1", None, exact) == (b"j1", None)  # nothing known: a bare wake-up


def test_the_older_bare_word_and_a_malformed_revision_only_wake() -> None:
    assert appliedword.decode(b"j1", None) == appliedword.AppliedWord("j1")
    headers = {appliedword.JOB_HEADER: "j1", appliedword.REVISION_HEADER: "x"}
    assert appliedword.decode(b"{}", headers) == appliedword.AppliedWord("j1")
