"""Device assignment per attempt (issue 13): a pure function over a snapshot of an executor's
reported devices and the devices live attempts hold there. No GPU exists on this machine; the
device lists are what a heartbeat from a machine with GPUs reports."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainyard_scheduler.gpu_assignment import NotEnoughDevices, assign_devices, free_devices

pytestmark = [pytest.mark.unit, pytest.mark.security]


def test_lowest_free_indices_first_skipping_held_ones():
    got = assign_devices({"e1": 2}, {"e1": [0, 1, 2, 3]}, {"e1": {0, 2}})
    assert got == {"e1": (1, 3)}


def test_a_split_gang_gets_devices_on_each_member_executor():
    got = assign_devices({"a": 2, "b": 1}, {"a": [0, 1], "b": [4, 5]}, {"a": set(), "b": {4}})
    assert got == {"a": (0, 1), "b": (5,)}


def test_no_device_list_or_no_gpu_needed_assigns_nothing():
    assert assign_devices({"old": 2, "cpu": 0}, {"old": [], "cpu": [0, 1]}, {}) == {}


def test_too_few_free_devices_is_an_error_naming_the_executor():
    with pytest.raises(NotEnoughDevices) as info:
        assign_devices({"e1": 2}, {"e1": [0, 1]}, {"e1": {1}})
    assert info.value.executor_id == "e1" and info.value.free == (0,)
    assert "e1" in str(info.value)


def test_free_devices_ignore_held_indices_not_reported():
    assert free_devices([3, 1, 2], {2, 7}) == (1, 3)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("start"), st.integers(1, 4)),
        st.tuples(st.just("end"), st.integers(0, 20)),
    ),
    max_size=40,
)


@given(st.sets(st.integers(0, 15), min_size=1, max_size=8), operations)
def test_never_two_live_attempts_on_one_device(reported, ops):
    """Attempts start and end in any order; each start is assigned from what the live ones hold."""
    devices = sorted(reported)
    live: dict[int, tuple[int, ...]] = {}
    next_id = 0
    for kind, n in ops:
        if kind == "end":
            if live:
                live.pop(sorted(live)[n % len(live)])
            continue
        held = {d for ds in live.values() for d in ds}
        free = len(devices) - len(held)
        try:
            got = assign_devices({"e": n}, {"e": devices}, {"e": held})["e"]
        except NotEnoughDevices:
            assert free < n  # refused only when there really is no room
            continue
        assert len(got) == n and set(got) <= set(devices)
        assert not set(got) & held
        assert list(got) == sorted(set(devices) - held)[:n]  # lowest first
        live[next_id] = got
        next_id += 1
    every = [d for ds in live.values() for d in ds]
    assert len(every) == len(set(every))


def test_a_split_gang_s_members_each_store_their_own_devices():
    from datetime import UTC, datetime

    from trainyard_contracts import JobRecord, JobSpec, JobState
    from trainyard_contracts.records import GangMember, GangPlacement
    from trainyard_scheduler.gpu_assignment import placement_needs, with_gang_devices

    now = datetime.now(UTC)
    spec = JobSpec.model_validate({"name": "g", "command": ["true"], "replicas": 3, "resources": {"gpu": 2}})
    record = JobRecord(job_id="j", spec=spec, state=JobState.QUEUED, submitted_at=now, updated_at=now)
    gang = GangPlacement(
        attempt=1,
        master_addr="10.0.0.1",
        master_port=29500,
        members=[GangMember(executor_id="a", ranks=[0, 1]), GangMember(executor_id="b", ranks=[2])],
    )
    needs = placement_needs(record, "a", gang)
    assert needs == {"a": 4, "b": 2}
    with pytest.raises(NotEnoughDevices):  # b has one free device, its rank needs two
        assign_devices(needs, {"a": [0, 1, 2, 3], "b": [0, 1]}, {"b": {0}})
    chosen = assign_devices(needs, {"a": [0, 1, 2, 3], "b": [4, 5, 6]}, {"b": {4}})
    placed = with_gang_devices(gang, chosen)
    stored = record.model_copy(update={"gang": placed, "attempt": 1})
    assert stored.gpu_devices(1, "a") == [0, 1, 2, 3]
    assert stored.gpu_devices(1, "b") == [5, 6]
    assert stored.gpu_devices(2, "b") == []  # another attempt holds nothing of this placement
