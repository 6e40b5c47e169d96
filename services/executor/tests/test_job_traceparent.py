"""A job's process gets the trace context it joins (``TRACEPARENT``); its spec may set its own."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from trainyard_contracts import JobSpec, lifecycle
from trainyard_executor.jobenv import job_env

pytestmark = [pytest.mark.unit, pytest.mark.insight]
NOW = datetime(2026, 12, 3, tzinfo=UTC)
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _env(traceparent: str | None, **spec: object) -> dict[str, str]:
    record = lifecycle.new_record("traced0001", JobSpec(name="fit", command=["true"], **spec), NOW, None)
    return job_env(
        record, 1, {"TRACEPARENT": "00-from-the-executor-itself"}, (), None, traceparent=traceparent
    )


def test_the_job_gets_the_trace_context_it_is_handed() -> None:
    assert _env(PARENT)["TRACEPARENT"] == PARENT


def test_no_trace_no_variable_and_the_executors_own_never_leaks() -> None:
    assert "TRACEPARENT" not in _env(None)


def test_a_spec_that_sets_its_own_keeps_it() -> None:
    mine = "00-11111111111111111111111111111111-2222222222222222-01"
    assert _env(PARENT, env={"TRACEPARENT": mine})["TRACEPARENT"] == mine
