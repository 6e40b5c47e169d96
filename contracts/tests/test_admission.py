"""The admission signature: what it covers, and that nothing else verifies."""

from __future__ import annotations

import pytest

from trainyard_contracts import JobRecord, JobSpec, JobState, lifecycle
from trainyard_contracts._time import utcnow
from trainyard_contracts.admission import is_admitted, signed

pytestmark = pytest.mark.unit

KEY = b"k" * 32


def admitted() -> JobRecord:
    spec = JobSpec(name="train", command=["python", "train.py"], env={"SEED": "1"})
    return signed(lifecycle.new_record("0job", spec, utcnow(), "team-a"), KEY)


def test_a_signed_record_verifies_after_a_trip_through_json_and_a_change_of_state():
    record = JobRecord.model_validate_json(admitted().model_dump_json())
    assert is_admitted(record, KEY)
    moved = lifecycle.advance(record, JobState.QUEUED, utcnow())
    assert is_admitted(moved, KEY)  # the state, times and attempts are not what was admitted


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.model_copy(update={"spec": r.spec.model_copy(update={"command": ["sh", "-c", "x"]})}),
        lambda r: r.model_copy(update={"spec": r.spec.model_copy(update={"priority": 1000})}),
        lambda r: r.model_copy(update={"spec": r.spec.model_copy(update={"queue": "other"})}),
        lambda r: r.model_copy(update={"spec": r.spec.model_copy(update={"env": {"SEED": "2"}})}),
        lambda r: r.model_copy(update={"job_id": "1job"}),
        lambda r: r.model_copy(update={"submitted_by": "admin"}),
        lambda r: r.model_copy(update={"admission": None}),
        lambda r: r.model_copy(update={"admission": "hmac-sha256:" + "0" * 64}),
    ],
    ids=["command", "priority", "queue", "env", "job_id", "submitted_by", "unsigned", "guessed"],
)
def test_any_change_of_what_was_admitted_fails_verification(change):
    assert not is_admitted(change(admitted()), KEY)


def test_another_key_does_not_verify():
    assert not is_admitted(admitted(), b"x" * 32)
