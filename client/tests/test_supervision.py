"""The embedded stack's restart policy: restart with growing delays, give up after the limit."""

from __future__ import annotations

import pytest

from trainyard_client.supervision import RestartBook, RestartPolicy

pytestmark = pytest.mark.unit


def test_restarts_back_off_and_stop_after_the_limit_within_the_window():
    book = RestartBook(RestartPolicy(limit=5, window_seconds=60, backoff_seconds=(1, 2, 4, 8)))
    answers = [book.exited("executor", -9, now) for now in (0, 2, 5, 10, 19)]
    assert [a.delay_seconds for a in answers] == [1, 2, 4, 8, 8]
    assert [a.number for a in answers] == [1, 2, 3, 4, 5]
    assert not any(a.given_up for a in answers)
    last = book.exited("executor", 1, 28)
    assert last.given_up and last.exit_code == 1


def test_exits_older_than_the_window_are_forgotten_and_each_process_counts_alone():
    book = RestartBook(RestartPolicy(limit=2, window_seconds=60, backoff_seconds=(1, 2)))
    assert book.exited("nats", -9, 0).number == 1
    assert book.exited("nats", -9, 30).number == 2
    assert book.exited("scheduler", -9, 31).number == 1  # another process: its own count
    assert book.exited("nats", -9, 59).given_up
    again = book.exited("nats", -9, 95)  # the restarts at 0 and 30 are more than 60 s ago
    assert not again.given_up and again.number == 1 and again.delay_seconds == 1


def test_no_restarts_allowed_gives_up_at_the_first_exit():
    assert RestartBook(RestartPolicy(limit=0)).exited("registry", 1, 0).given_up


@pytest.mark.parametrize(
    "kwargs", [{"limit": -1}, {"window_seconds": 0}, {"backoff_seconds": ()}, {"backoff_seconds": (-1,)}]
)
def test_a_policy_that_cannot_work_is_refused(kwargs):
    with pytest.raises(ValueError):
        RestartPolicy(**kwargs)
