"""The scheduler's admission gate: checks a waiting record once per revision, forgets what left."""

from __future__ import annotations

import pytest

from trainyard_contracts import JobSpec, lifecycle
from trainyard_contracts._time import utcnow
from trainyard_contracts.admission import signed
from trainyard_scheduler.admission import AdmissionGate

pytestmark = pytest.mark.unit

KEY = b"k" * 32


def record(job_id: str = "0job"):
    return lifecycle.new_record(job_id, JobSpec(name="j", command=["true"]), utcnow(), "team")


def test_without_a_key_everything_is_admitted():
    gate = AdmissionGate(None)
    assert not gate.enforced and gate.admits(record())


def test_with_a_key_only_signed_records_are_admitted_and_a_rewrite_at_a_new_revision_is_caught():
    gate = AdmissionGate(KEY)
    good = signed(record(), KEY)
    assert gate.admits(good, revision=3) and not gate.admits(record("1job"), revision=4)
    rewritten = good.model_copy(update={"spec": good.spec.model_copy(update={"command": ["evil"]})})
    assert gate.admits(rewritten, revision=3)  # the same revision is the same record: not re-checked
    assert not gate.admits(rewritten, revision=5) and not gate.admits(rewritten)


def test_what_no_longer_waits_is_forgotten():
    gate = AdmissionGate(KEY)
    gate.admits(signed(record("a"), KEY), revision=1)
    gate.admits(signed(record("b"), KEY), revision=2)
    gate.keep_only(["b"])
    assert set(gate._verified) == {"b"}
