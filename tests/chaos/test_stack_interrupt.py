"""Chaos: Ctrl-C of the whole `trainyard up` while jobs run, then a restart, several times; audit.

Real parts only: `trainyard up` as a user runs it (nats-server and the five services below it),
every job a local process that appends its runs to a marker file (start, a tick every 0.2 s, end
once its work is done; a line ``term`` when told to stop, then 2 s to save its work, as a training
job saving a checkpoint does).

After each SIGINT: `trainyard up` exits within its deadline and no process that ran below it
(services, rank supervisors, jobs) is left. After the last restart every job must have succeeded,
and the audit over the marker file finds no job whose work ran twice: no process of a job ran
after another had completed it (``audit.ran_after_completing``), no attempt in two processes, no two
runs at once. A run stopped by the Ctrl-C and run again as the next attempt is what handing an
attempt back means, and is counted apart (``handed_back``).
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from trainyard_client.uptest import Up, alive, free_block, process_tree, until

from .audit import TICK_SECONDS, attempts_run_twice, overlapping_runs, parse_markers, ran_after_completing

pytestmark = [pytest.mark.chaos, pytest.mark.local, pytest.mark.timeout(1800)]

ROUNDS = 3
JOBS_PER_ROUND = 10
EXECUTOR_CPU = 2
WORK_SECONDS = 15.0
"""Longer than a stop takes: a job that was not stopped is still running when `trainyard up` has
exited (found as left over), not quietly done."""
STOP_DEADLINE_SECONDS = 60
"""SIGINT to exit: the stack's own stop timeout (20 s) plus nats-server's stop, with room for a
loaded machine; not a timing assertion, a bound on waiting."""

JOB_CODE = f"""
import os, signal, sys, time
marker, seconds = sys.argv[1], float(sys.argv[2])
job, attempt, pid = os.environ['TRAINYARD_JOB_ID'], os.environ['TRAINYARD_ATTEMPT'], os.getpid()
def mark(kind):
    fd = os.open(marker, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f'{{kind}} {{job}} {{attempt}} {{pid}} {{time.time():.6f}}\\n'.encode())
    os.close(fd)
def on_term(signum, frame):
    mark('term')
    time.sleep(2)
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
mark('start')
until = time.time() + seconds
while time.time() < until:
    time.sleep({TICK_SECONDS})
    mark('tick')
mark('end')
"""


def _spec(n: int, marker: Path) -> dict:
    return {
        "name": f"interrupt-{n}",
        "command": [sys.executable, "-c", JOB_CODE, str(marker), f"{WORK_SECONDS + (n % 5) * 2.5:.1f}"],
        "resources": {"cpu": 0.25, "memory": 64},
        "labels": {"chaos-seq": str(n)},
    }


def _lines(marker: Path) -> list[str]:
    return marker.read_text().splitlines() if marker.exists() else []


def _working(marker: Path, jobs: list[str]) -> set[str]:
    """The jobs among ``jobs`` with a run that started and has not ended."""
    runs = parse_markers(_lines(marker))
    wanted = set(jobs)
    return {r.job_id for r in runs if r.job_id in wanted and not r.ended}


def test_ctrl_c_of_the_whole_stack_mid_run_and_restart_runs_no_job_twice(tmp_path):
    data, marker = tmp_path / "data", tmp_path / "marker"
    base = free_block(7)
    env = {"TRAINYARD_SCHEDULER_TICK_SECONDS": "0.2"}
    jobs: list[str] = []
    table: list[dict] = []
    for round_no in range(ROUNDS):
        up = Up(data, base, base + 6, "--executor-cpu", str(EXECUTOR_CPU), env=env).start()
        try:
            with up.client() as client:
                batch = [client.submit(_spec(len(jobs) + n, marker)).job_id for n in range(JOBS_PER_ROUND)]
            jobs += batch
            # mid-run: several jobs of this round working (started, not yet done)
            until(
                lambda batch=batch: len(_working(marker, batch)) >= 4, 180, f"round {round_no}: jobs running"
            )
            below = process_tree(up.pid)
            interrupted_at = time.time()
            up.signal(signal.SIGINT)
            code = up.wait(timeout=STOP_DEADLINE_SECONDS)
        finally:
            up.kill()
        console = up.console()
        left = {pid: cmd[:120] for pid, cmd in below.items() if alive(pid)}
        terms = sum(1 for line in _lines(marker) if line.startswith("term"))
        table.append(
            {
                "round": round_no,
                "stop_seconds": round(time.time() - interrupted_at, 1),
                "processes_below": len(below),
                "left": len(left),
                "term_lines_so_far": terms,
            }
        )
        assert code == 0, console
        assert "Trainyard stopped" in console, console
        assert not left, f"round {round_no}: left running after `trainyard up` exited: {left}\n{console}"

    up = Up(data, base, base + 6, "--executor-cpu", str(EXECUTOR_CPU), env=env).start()
    try:
        with up.client() as client:
            records = {job: client.wait(job, timeout=600) for job in jobs}
        up.signal(signal.SIGINT)
        assert up.wait(timeout=STOP_DEADLINE_SECONDS) == 0, up.console()
    finally:
        up.kill()

    runs = parse_markers(_lines(marker))
    twice = ran_after_completing(runs)
    handed_back = sum(1 for r in records.values() if r.attempt > 1)
    not_succeeded = {j: r.state.value for j, r in records.items() if r.state.value != "succeeded"}
    summary = {
        "faults": f"{ROUNDS} x SIGINT of `trainyard up` mid-run, then a restart",
        "jobs": len(jobs),
        "lost": len(not_succeeded),
        "run_twice": len(twice),
        "runs": len(runs),
        "jobs_handed_back": handed_back,
        "rounds": table,
    }
    print(f"\nstack interrupt audit: {summary}")
    assert not not_succeeded, summary
    assert not twice, [(a.job_id, a.attempt, a.pid, b.attempt, b.pid) for a, b in twice]
    assert not attempts_run_twice(runs)
    assert not overlapping_runs(runs)
    assert handed_back > 0, "no attempt was interrupted: the test did not test a Ctrl-C mid-run"
