"""LeaseWatch: when a stalled start may skip reading its record (the lease was held throughout)."""

from __future__ import annotations

import pytest

from trainyard_executor.leasewatch import LeaseWatch

pytestmark = pytest.mark.unit


def test_no_renewal_yet_means_not_held() -> None:
    assert not LeaseWatch(15).held_throughout(0.0, now=1.0)


def test_renewals_within_a_lease_of_each_other_hold_it_from_the_first() -> None:
    watch = LeaseWatch(15)
    for asked in (0.0, 2.0, 4.5, 18.0):  # 18 answered at 18.5: 14.5 after the ask at 4
        watch.renewed(asked, asked + 0.5)
    assert watch.held_throughout(0.0, now=20.0)
    assert not watch.held_throughout(-1.0, now=20.0)  # before the first renewal: unknown


def test_a_gap_of_a_lease_breaks_it_and_it_holds_again_from_the_renewal_after() -> None:
    watch = LeaseWatch(15)
    watch.renewed(0.0, 0.1)
    watch.renewed(2.0, 17.0)  # answered a lease after the previous ask: it may have lapsed
    assert not watch.held_throughout(1.0, now=16.5)
    assert watch.held_throughout(2.0, now=16.5)  # counted from the ask at 2: good until 17


def test_no_renewal_for_a_lease_until_now_means_not_held() -> None:
    watch = LeaseWatch(15)
    watch.renewed(0.0, 0.1)
    assert watch.held_throughout(0.0, now=14.9)
    assert not watch.held_throughout(0.0, now=15.0)  # a frozen executor thawing: it reads
