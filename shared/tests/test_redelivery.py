"""What a failed message deserves (redelivery.py): a leader election is waited out, a message
failing on its own merits is dead-lettered after its budget."""

from __future__ import annotations

import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import APIError, KeyWrongLastSequenceError, NoStreamResponseError, ServiceUnavailableError
from pydantic import ValidationError

from trainyard_contracts import JobQueued
from trainyard_shared.redelivery import (
    LONGEST_DELAY,
    TRANSIENT_MAX_DELIVER,
    FailureBudget,
    is_transient,
    retry_delay,
)

pytestmark = pytest.mark.unit


def raised_from(cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as exc:
            raise RuntimeError("writing the record failed") from exc
    except RuntimeError as wrapped:
        return wrapped


def test_the_bus_not_answering_is_transient_and_a_bad_message_is_not():
    for exc in (
        NoStreamResponseError(),
        NatsTimeout(),
        TimeoutError(),
        ServiceUnavailableError(code=503, description="no leader"),
        APIError(code=500, err_code=10008, description="JetStream system temporarily unavailable"),
        ConnectionResetError(),
        raised_from(NoStreamResponseError()),
    ):
        assert is_transient(exc), exc
    try:
        JobQueued.model_validate({})
    except ValidationError as invalid:
        bad: BaseException = invalid
    for exc in (
        bad,
        ValueError("no"),
        KeyWrongLastSequenceError(),
        APIError(code=400, description="bad request"),
        FileNotFoundError(),
        raised_from(KeyError("x")),
    ):
        assert not is_transient(exc), exc


def test_the_delay_doubles_from_half_a_second_to_thirty():
    assert [retry_delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, LONGEST_DELAY, LONGEST_DELAY]
    # the server's bound outlasts many elections: several minutes of waiting
    assert sum(retry_delay(n) for n in range(1, TRANSIENT_MAX_DELIVER)) > 20 * 60


def test_transient_failures_do_not_spend_a_messages_budget():
    budget = FailureBudget(max_deliver=5)
    deliveries = 0
    for _ in range(20):  # an election that lasts twenty deliveries
        deliveries += 1
        verdict = budget.judge(7, deliveries, NoStreamResponseError(), "NoStreamResponseError")
        assert not verdict.park and verdict.transient and verdict.delay == retry_delay(deliveries)
    verdicts = []
    for _ in range(5):  # then it fails on its own merits
        deliveries += 1
        verdicts.append(budget.judge(7, deliveries, RuntimeError("boom"), "RuntimeError: boom"))
    assert [v.park for v in verdicts] == [False, False, False, False, True]
    assert all(v.delay is None for v in verdicts[:4])
    assert verdicts[-1].reason == "failed 5 times, last: RuntimeError: boom"
    # another message's count is its own
    assert not budget.judge(8, 1, RuntimeError("boom"), "x").park


def test_the_servers_bound_ends_even_a_transient_failure():
    budget = FailureBudget(max_deliver=5)
    verdict = budget.judge(1, TRANSIENT_MAX_DELIVER, NoStreamResponseError(), "NoStreamResponseError")
    assert verdict.park and "the bus unavailable" in verdict.reason
    assert budget.judge(2, TRANSIENT_MAX_DELIVER, RuntimeError(), "RuntimeError").park
