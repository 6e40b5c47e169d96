"""When a schedule fires, on a simulated clock: DST, missed ticks vs the deadline, concurrency."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainyard_contracts.workflow import ScheduleSpec
from trainyard_workflow.schedule_core import (
    MAX_BACKFILL,
    MAX_FIRED_PER_PASS,
    CronError,
    backfill_ticks,
    check_cron,
    plan_ticks,
    tick_run_id,
    ticks_between,
)

pytestmark = [pytest.mark.unit, pytest.mark.workflow]
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def schedule(cron: str = "* * * * *", timezone: str = "UTC", **kw) -> ScheduleSpec:
    pipeline = {"name": "p", "steps": [{"name": "a", "job": {"name": "a", "command": ["true"]}}]}
    return ScheduleSpec.model_validate(
        {"name": "nightly", "cron": cron, "timezone": timezone, "pipeline": pipeline, **kw}
    )


def at(year, month, day, hour=0, minute=0, zone=UTC) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=zone)


def run_clock(spec, start: datetime, end: datetime, step: timedelta, running=()) -> list[datetime]:
    """Every tick fired while a clock moves from ``start`` to ``end`` in steps of ``step``."""
    fired, last, now = [], start, start
    while now < end:
        now = min(now + step, end)
        plan = plan_ticks(spec, last, now, running)
        fired += plan.fire
        last = plan.last_tick
    return fired


# -- daylight saving time ------------------------------------------------------------------


def test_a_tick_in_the_hour_skipped_in_spring_fires_right_after_the_change_in_berlin():
    spec = schedule("30 2 * * *", "Europe/Berlin")
    fired = run_clock(
        spec, at(2026, 3, 28, 12, zone=BERLIN), at(2026, 3, 30, 12, zone=BERLIN), timedelta(minutes=1)
    )
    # 2026-03-29 02:00 CET became 03:00 CEST: there was no 02:30 that day
    assert [t.astimezone(BERLIN).isoformat() for t in fired] == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
    ]


def test_a_tick_in_the_hour_repeated_in_autumn_fires_once_in_new_york():
    spec = schedule("30 1 * * *", "America/New_York")
    fired = run_clock(
        spec, at(2026, 10, 31, 12, zone=NEW_YORK), at(2026, 11, 2, 12, zone=NEW_YORK), timedelta(minutes=7)
    )
    # 2026-11-01 02:00 EDT fell back to 01:00 EST: 01:30 came twice, the schedule fires on the first
    assert [t.isoformat() for t in fired] == ["2026-11-01T05:30:00+00:00", "2026-11-02T06:30:00+00:00"]


def test_the_repeated_hour_fires_once_even_when_a_pass_starts_inside_its_second_copy():
    spec = schedule("30 2 * * *", "Europe/Berlin")
    first = at(2026, 10, 25, 0, 30)  # 02:30 CEST, the first copy
    inside_second_copy = at(2026, 10, 25, 1, 0)  # 02:00 CET, the hour again
    assert plan_ticks(spec, first, inside_second_copy).fire == ()
    assert plan_ticks(spec, first, at(2026, 10, 25, 2, 0)).fire == ()


def test_a_deadline_ending_inside_the_second_copy_of_the_hour_does_not_bring_the_first_back():
    spec = schedule("30 2 * * *", "Europe/Berlin", starting_deadline_seconds=2400)
    # down from 01:00 CEST to 02:40 CET: the deadline reaches back to 02:00 CET, inside the repeated
    # hour; 02:30 CEST is older, so missed, and 02:30 CET is no tick of its own
    plan = plan_ticks(spec, at(2026, 10, 24, 23, 0), at(2026, 10, 25, 1, 40))
    assert plan.fire == () and plan.missed == 1


def test_a_wildcard_hour_fires_in_both_copies_of_the_repeated_hour_they_are_different_instants():
    spec = schedule("0 * * * *", "Europe/Berlin")
    fired = run_clock(spec, at(2026, 10, 24, 23, 30), at(2026, 10, 25, 2, 30), timedelta(minutes=10))
    assert [t.astimezone(BERLIN).isoformat() for t in fired] == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T03:00:00+01:00",
    ]


# -- missed ticks and the starting deadline ------------------------------------------------


def test_after_downtime_ticks_within_the_deadline_fire_older_ones_are_missed_and_counted():
    spec = schedule("*/10 * * * *", starting_deadline_seconds=1800)
    plan = plan_ticks(spec, at(2026, 1, 1, 0, 0), at(2026, 1, 1, 2, 5))  # down 2 h 5 min
    assert [t.strftime("%H:%M") for t in plan.fire] == ["01:40", "01:50", "02:00"]
    assert plan.missed == 9  # 00:10 .. 01:30 are older than 30 minutes
    assert plan.last_tick == at(2026, 1, 1, 2, 0)


def test_without_a_deadline_only_the_newest_missed_tick_fires():
    spec = schedule("*/10 * * * *")
    plan = plan_ticks(spec, at(2026, 1, 1, 0, 0), at(2026, 1, 1, 2, 5))
    assert plan.fire == (at(2026, 1, 1, 2, 0),) and plan.missed == 11


def test_a_pass_between_ticks_fires_nothing_and_a_second_pass_at_the_same_instant_neither():
    spec = schedule("0 3 * * *", "Europe/Berlin", starting_deadline_seconds=60)
    plan = plan_ticks(spec, at(2026, 6, 1, 1, 0), at(2026, 6, 1, 1, 0) + timedelta(seconds=30))
    assert plan.fire == () and plan.missed == 0
    again = plan_ticks(spec, plan.last_tick, at(2026, 6, 1, 1, 0) + timedelta(seconds=30))
    assert again.fire == ()


def test_a_long_downtime_fires_at_most_a_bounded_number_per_pass_the_rest_on_the_next():
    spec = schedule("* * * * *", starting_deadline_seconds=86400)
    start = at(2026, 1, 1)
    plan = plan_ticks(spec, start, start + timedelta(hours=5))
    assert len(plan.fire) == MAX_FIRED_PER_PASS and plan.last_tick == plan.fire[-1]
    following = plan_ticks(spec, plan.last_tick, start + timedelta(hours=5))
    assert following.fire[0] == plan.fire[-1] + timedelta(minutes=1)


def test_suspended_drops_due_ticks_so_resuming_does_not_fire_them():
    spec = schedule("*/5 * * * *", suspended=True)
    plan = plan_ticks(spec, at(2026, 1, 1), at(2026, 1, 1, 0, 20))
    assert plan.fire == () and plan.suspended == 4 and plan.last_tick == at(2026, 1, 1, 0, 20)
    resumed = spec.model_copy(update={"suspended": False})
    assert plan_ticks(resumed, plan.last_tick, at(2026, 1, 1, 0, 24)).fire == ()


# -- concurrency ---------------------------------------------------------------------------


def test_allow_fires_each_due_tick_even_while_a_run_is_going():
    spec = schedule("* * * * *", starting_deadline_seconds=600)
    plan = plan_ticks(spec, at(2026, 1, 1), at(2026, 1, 1, 0, 3), running=["r1"])
    assert len(plan.fire) == 3 and plan.cancel == ()


def test_forbid_skips_while_a_run_is_going_and_fires_the_newest_when_none_is():
    spec = schedule("* * * * *", concurrency="forbid", starting_deadline_seconds=600)
    busy = plan_ticks(spec, at(2026, 1, 1), at(2026, 1, 1, 0, 3), running=["r1"])
    assert busy.fire == () and busy.forbidden == 3 and busy.last_tick == at(2026, 1, 1, 0, 3)
    idle = plan_ticks(spec, at(2026, 1, 1), at(2026, 1, 1, 0, 3))
    assert idle.fire == (at(2026, 1, 1, 0, 3),) and idle.forbidden == 2


def test_replace_fires_the_newest_and_stops_the_runs_still_going():
    spec = schedule("* * * * *", concurrency="replace", starting_deadline_seconds=600)
    plan = plan_ticks(spec, at(2026, 1, 1), at(2026, 1, 1, 0, 2), running=["r1", "r2"])
    assert plan.fire == (at(2026, 1, 1, 0, 2),) and plan.cancel == ("r1", "r2") and plan.replaced == 1
    nothing_due = plan_ticks(
        spec, plan.last_tick, at(2026, 1, 1, 0, 2) + timedelta(seconds=40), running=["r3"]
    )
    assert nothing_due.cancel == ()  # only a tick replaces


# -- backfill, run ids, bad cron -----------------------------------------------------------


def test_backfill_lists_the_ticks_between_both_ends_inclusive_and_is_bounded():
    spec = schedule("0 3 * * *", "Europe/Berlin")
    ticks = backfill_ticks(spec, at(2026, 3, 1, 2, 0), at(2026, 3, 3, 2, 0))
    assert [t.isoformat() for t in ticks] == [
        "2026-03-01T02:00:00+00:00",
        "2026-03-02T02:00:00+00:00",
        "2026-03-03T02:00:00+00:00",
    ]
    with pytest.raises(ValueError, match=f"more than {MAX_BACKFILL} ticks"):
        backfill_ticks(schedule("* * * * *"), at(2026, 1, 1), at(2026, 1, 2))
    with pytest.raises(ValueError, match="before 'from'"):
        backfill_ticks(spec, at(2026, 1, 2), at(2026, 1, 1))


def test_a_tick_names_one_run_per_schedule_sorted_by_time():
    tick = at(2026, 1, 1, 3)
    assert tick_run_id("nightly", tick) == tick_run_id("nightly", tick.astimezone(BERLIN))
    assert tick_run_id("nightly", tick) != tick_run_id("hourly", tick)
    assert tick_run_id("nightly", tick) < tick_run_id("nightly", tick + timedelta(minutes=1))
    assert len(tick_run_id("nightly", tick)) == 16


def test_a_cron_cronsim_cannot_read_is_refused_with_the_reason():
    assert check_cron("0 3 * * 1-5") == "0 3 * * 1-5"
    with pytest.raises(CronError, match="not a cron expression"):
        check_cron("61 3 * * *")


# -- properties ----------------------------------------------------------------------------

CRONS = ["* * * * *", "*/7 * * * *", "30 2 * * *", "0 */3 * * *", "15 1,2,3 * * 0", "0 0 29 2 *"]
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]


@settings(max_examples=60, deadline=None)
@given(
    cron=st.sampled_from(CRONS),
    zone=st.sampled_from(ZONES),
    start=st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 1), timezones=st.just(UTC)
    ),
    steps=st.lists(st.integers(min_value=1, max_value=240), min_size=1, max_size=40),
)
def test_a_clock_moving_in_any_steps_fires_each_tick_once_in_order(cron, zone, start, steps):
    spec = schedule(cron, zone, starting_deadline_seconds=7 * 86400)
    fired, last, now = [], start, start
    for minutes in steps:
        now += timedelta(minutes=minutes)
        plan = plan_ticks(spec, last, now)
        assert plan.last_tick >= last  # a pass never goes back
        fired += plan.fire
        last = plan.last_tick
    expected = ticks_between(spec, start, last)
    assert fired == expected  # the same ticks however the clock moved, none twice
    assert all(a < b for a, b in itertools.pairwise(fired))
    assert (
        len({t.astimezone(ZoneInfo(zone)).replace(tzinfo=None, fold=0) for t in fired}) == len(fired)
        or "*" in cron.split()[1]
    )
