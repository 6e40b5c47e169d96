"""A gang the policy split across executors, as the service places it: rendezvous and members.

Pure functions of the scheduler's core (no broker): the master port, the placement it writes in
the one compare-and-set, and which executor's loss ends the attempt.
"""

from __future__ import annotations

from typing import cast

import pytest
from faststream.nats import NatsBroker

from trainyard_contracts import (
    Capacity,
    ExecutorHeartbeat,
    JobSpec,
    JobState,
    StartAttempt,
    Subjects,
    lifecycle,
)
from trainyard_contracts._time import utcnow
from trainyard_contracts.commands import Rendezvous
from trainyard_contracts.records import GangMember, GangPlacement, PortRange
from trainyard_scheduler.core import SchedulerCore
from trainyard_scheduler.policy import Assignment, RankPlacement
from trainyard_scheduler.splitgang import rendezvous_port, split_placement
from trainyard_scheduler.startcommand import start_command
from trainyard_shared.publishing import CommandSender

pytestmark = pytest.mark.unit
NOW = utcnow()


def beat(eid: str, backend: str = "local", host: str | None = "10.0.0.1", ports=(29500, 29502)):
    return ExecutorHeartbeat(
        executor_id=eid,
        backend=backend,
        capacity=Capacity(cpu=1, memory=1024),
        advertise_host=host,
        rendezvous_ports=PortRange(first=ports[0], last=ports[1]) if ports else None,
    )


def split(job_id: str = "j1") -> Assignment:
    # the policy lists placements in its own order; rank 0's executor is the assignment's
    return Assignment(job_id, 1, "b", (RankPlacement("a", (2, 1)), RankPlacement("b", (0,))))


def test_the_master_port_is_the_same_for_the_same_attempt_and_skips_taken_ones() -> None:
    ports = PortRange(first=29500, last=29502)
    port = rendezvous_port("j1", 1, ports, set())
    assert port is not None and 29500 <= port <= 29502
    assert rendezvous_port("j1", 1, ports, set()) == port  # two replicas, one answer
    other = rendezvous_port("j1", 1, ports, {port})
    assert other is not None and other != port
    assert rendezvous_port("j1", 1, ports, {29500, 29501, 29502}) is None


def test_the_placement_puts_rank_0_s_executor_first_with_its_address() -> None:
    taken: dict[str, set[int]] = {}
    placed = split_placement(split(), {"a": beat("a", host="10.0.0.2"), "b": beat("b")}, taken)
    assert isinstance(placed, GangPlacement)
    assert placed.master_addr == "10.0.0.1" and placed.attempt == 1 and placed.world_size == 3
    assert [(m.executor_id, m.ranks) for m in placed.members] == [("b", [0]), ("a", [1, 2])]
    assert taken == {"10.0.0.1": {placed.master_port}}
    # a second gang mastered on the same host in the same pass gets another port
    again = split_placement(split("j2"), {"a": beat("a"), "b": beat("b")}, taken)
    assert isinstance(again, GangPlacement) and again.master_port != placed.master_port


def test_a_split_it_cannot_run_says_why() -> None:
    kube = split_placement(split(), {"a": beat("a", backend="kubernetes"), "b": beat("b")}, {})
    assert isinstance(kube, str) and "kubernetes" in kube
    kubeflow = split_placement(split(), {"a": beat("a"), "b": beat("b", backend="kubeflow")}, {})
    assert isinstance(kubeflow, str) and "runs gangs whole (kubeflow)" in kubeflow  # one TrainJob
    old = split_placement(split(), {"a": beat("a"), "b": beat("b", host=None)}, {})
    assert isinstance(old, str) and "no rendezvous address" in old
    full = split_placement(split(), {"a": beat("a"), "b": beat("b")}, {"10.0.0.1": {29500, 29501, 29502}})
    assert isinstance(full, str) and "taken" in full
    gone = split_placement(split(), {"b": beat("b")}, {})
    assert isinstance(gone, str) and "gone" in gone


def test_any_running_member_s_lost_lease_ends_the_attempt() -> None:
    spec = JobSpec(name="g", command=["true"], replicas=2)
    record = lifecycle.schedule(
        lifecycle.advance(lifecycle.new_record("j1", spec, NOW, None), JobState.QUEUED, NOW), "a", NOW
    )
    gang = GangPlacement(
        attempt=1,
        master_addr="10.0.0.1",
        master_port=29500,
        members=[GangMember(executor_id="a", ranks=[0]), GangMember(executor_id="b", ranks=[1])],
    )
    record = record.model_copy(update={"gang": gang})
    both = {"a": beat("a"), "b": beat("b")}
    assert SchedulerCore._lost_executor(record, both) == (False, None)
    assert SchedulerCore._lost_executor(record, {"a": beat("a")}) == (True, "b")  # not rank 0's
    # a member whose ranks have already succeeded may go away: the others finish the attempt
    done_b = record.model_copy(update={"gang": gang.with_member("b", state=JobState.SUCCEEDED)})
    assert SchedulerCore._lost_executor(done_b, {"a": beat("a")}) == (False, None)
    assert record.executors() == ["a", "b"] and record.runs_on("b") and not record.runs_on("c")
    plain = record.model_copy(update={"gang": None})
    assert SchedulerCore._lost_executor(plain, {"b": beat("b")}) == (True, "a")
    assert plain.executors() == ["a"]


def test_a_member_s_start_carries_the_rendezvous_once() -> None:
    spec = JobSpec(name="g", command=["true"], replicas=2)
    record = lifecycle.schedule(
        lifecycle.advance(lifecycle.new_record("j1", spec, NOW, None), JobState.QUEUED, NOW), "a", NOW
    )
    gang = GangPlacement(
        attempt=1,
        master_addr="10.0.0.1",
        master_port=29500,
        members=[GangMember(executor_id="a", ranks=[0]), GangMember(executor_id="b", ranks=[1])],
    )
    record = record.model_copy(update={"gang": gang})
    meet = Rendezvous(master_addr="10.0.0.1", master_port=29500, world_size=2, ranks=[1])
    commands = CommandSender(cast(NatsBroker, None), Subjects("t"))
    carried = {"record": record, "record_revision": 3}
    with_record = start_command(commands, record, "b", meet, carried, 1024 * 1024)
    assert with_record is not None
    start = StartAttempt.model_validate_json(with_record.payload)
    # the record's gang holds it (the executor reads it there); the spec likewise travels once
    assert start.rendezvous is None and start.spec is None
    assert start.record is not None and start.record.gang == gang
    # no room for the record: the command itself carries both
    room = (
        len(commands.outgoing(StartAttempt(job_id="j1", attempt=1, executor_id="b", spec=spec)).payload) + 200
    )
    alone = start_command(commands, record, "b", meet, carried, room)
    assert alone is not None
    start = StartAttempt.model_validate_json(alone.payload)
    assert start.record is None and start.spec == spec and start.rendezvous == meet
