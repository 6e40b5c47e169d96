"""The chaos audit's rules on hand-written inputs (no stack): what counts as lost or duplicated."""

from __future__ import annotations

from typing import Any

import pytest

from .audit import (
    Run,
    audit,
    audit_events,
    audit_pipeline_run,
    overlapping_runs,
    parse_markers,
    ran_after_completing,
)

pytestmark = pytest.mark.unit


def lines(*rows: tuple[str, str, int, int, float]) -> list[str]:
    return [f"{k} {j} {a} {p} {t:.6f}" for k, j, a, p, t in rows]


def ticks(job: str, attempt: int, pid: int, t0: float, t1: float, end: bool = True) -> list[str]:
    out = [("start", job, attempt, pid, t0)]
    t = t0
    while t + 0.2 <= t1 + 1e-9:
        t += 0.2
        out.append(("tick", job, attempt, pid, t))
    if end:
        out.append(("end", job, attempt, pid, t))
    return lines(*out)


def event(job: str, kind: str, attempt: int = 1, event_id: str | None = None) -> dict:
    return {
        "job_id": job,
        "type": kind,
        "attempt": attempt,
        "event_id": event_id or f"{job}-{attempt}-{kind}",
    }


def good_record(job: str, seq: int, attempt: int = 1, model: bool = False) -> dict:
    return {
        "job_id": job,
        "state": "succeeded",
        "attempt": attempt,
        "spec": {"labels": {"chaos-seq": str(seq)}},
        "model": {"name": "m", "version": 1} if model else None,
        "attempts": [
            {"number": n, "state": "requeued" if n < attempt else "succeeded"} for n in range(1, attempt + 1)
        ],
    }


def test_markers_parse_into_runs_and_a_frozen_gap_splits_execution():
    rows = ticks("j1", 1, 10, 100.0, 101.0) + ticks("j1", 1, 10, 110.0, 110.4)
    (run,) = parse_markers([*rows, "garbage line", "start j1 1"])
    assert run.ended and run.attempt == 1
    assert [round(a) for a, _ in run.intervals()] == [100, 110]


def test_runs_of_one_job_at_the_same_time_overlap_but_a_frozen_one_does_not():
    first = parse_markers(ticks("j1", 1, 10, 100.0, 101.0, end=False))
    second = parse_markers(ticks("j1", 2, 11, 100.5, 101.5))
    assert len(overlapping_runs(first + second)) == 1
    # attempt 1 froze at 100.2 and came back at 110: attempt 2 ran while it was frozen
    frozen = parse_markers(
        ticks("j1", 1, 10, 100.0, 100.2, end=False) + ticks("j1", 1, 10, 110.0, 110.2, end=False)
    )
    assert overlapping_runs(frozen + second) == []


def test_a_clean_run_has_no_findings():
    runs = parse_markers(ticks("j1", 1, 10, 100.0, 100.6) + ticks("j2", 1, 11, 100.0, 100.6))
    events = audit_events(
        [
            event("j1", "submitted"),
            event("j1", "succeeded"),
            event("j2", "succeeded"),
            event("j2", "succeeded"),
        ]
    )  # the same event read twice (same id) is one event
    found = audit(
        offered={1: "j1", 2: "j2"},
        records={"j1": good_record("j1", 1), "j2": good_record("j2", 2, model=True)},
        events=events,
        runs=runs,
        model_versions={"j2": 1},
        model_jobs=[2],
    )
    assert found.lost == [] and found.duplicated == []
    assert found.summary()["succeeded"] == 2


def test_lost_and_duplicated_are_each_found():
    runs = parse_markers(
        ticks("j1", 1, 10, 100.0, 100.6)
        + ticks("j1", 1, 12, 105.0, 105.6)  # the same attempt in a second process
        + ticks("j2", 1, 11, 100.0, 100.6)
    )
    records = {
        "j1": good_record("j1", 1),
        "j2": good_record("j2", 2, model=True),
        "j3": {**good_record("j3", 3), "state": "running"},
        "j4": good_record("j4", 1),  # a second record for offer 1
    }
    events = audit_events(
        [
            event("j1", "succeeded"),
            event("j1", "succeeded", event_id="other"),  # a second terminal event
            event("j2", "succeeded"),
            event("j4", "succeeded"),
        ]
    )
    found = audit(
        offered={1: "j1", 2: "j2", 3: "j3", 5: None, 6: "j6"},
        records=records,
        events=events,
        runs=runs,
        model_versions={"j2": 2},
        model_jobs=[2],
    )
    lost = " | ".join(found.lost)
    dup = " | ".join(found.duplicated)
    assert "offer 5: never accepted" in lost and "offer 6: accepted as j6, but no job record" in lost
    assert "job j3: still running" in lost and "job j4: succeeded as attempt 1, which never ran" in lost
    assert "offer 1: 2 job records" in dup and "job j1: 2 terminal events" in dup
    assert "announced succeeded more than once" in dup and "attempt 1 ran in more than one process" in dup
    assert "job j2: 2 model versions" in dup


def test_a_fenced_attempt_that_announced_its_end_is_a_finding():
    runs = parse_markers(ticks("j1", 2, 11, 100.0, 100.6))
    found = audit(
        offered={1: "j1"},
        records={"j1": good_record("j1", 1, attempt=2)},
        events=audit_events([event("j1", "succeeded", attempt=1), event("j1", "succeeded", attempt=2)]),
        runs=runs,
        model_versions={},
        model_jobs=[],
        fenced={"j1": 1},
    )
    assert any("fenced attempt 1 announced a terminal event" in d for d in found.duplicated)


def test_run_start_is_its_first_line():
    assert Run("j", 1, 1, [3.0, 1.0, 2.0]).start == 1.0


def test_work_that_completed_and_then_ran_again_is_found_but_a_stopped_run_may_be_followed():
    # j1: attempt 1 stopped by a Ctrl-C before its end, handed back, attempt 2 completed: fine.
    # j2: attempt 1 completed (its executor was stopped after the job ended), then attempt 2 ran.
    # j3: two processes both completed the work.
    runs = parse_markers(
        ticks("j1", 1, 10, 0.0, 1.0, end=False)
        + ticks("j1", 2, 11, 5.0, 6.0)
        + ticks("j2", 1, 20, 0.0, 1.0)
        + ticks("j2", 2, 21, 5.0, 5.4, end=False)
        + ticks("j3", 1, 30, 0.0, 1.0)
        + ticks("j3", 2, 31, 0.5, 1.5)
    )
    found = {(a.job_id, a.pid, b.pid) for a, b in ran_after_completing(runs)}
    assert found == {("j2", 20, 21), ("j3", 30, 31)}


def test_a_fenced_attempts_work_done_twice_is_a_note_any_other_run_after_completion_is_a_duplicate():
    """Attempt 1 did its work (100.0-100.6), fenced: its executor froze at 101.0 before recording
    it (or, with frozen_at 100.3, it finished after the thaw); attempt 2 on another executor did it
    again. Neither is recorded twice, so it is a note; the same runs of an attempt that was not
    fenced are work done twice."""
    runs = parse_markers(ticks("j1", 1, 11, 100.0, 100.6) + ticks("j1", 2, 12, 110.0, 110.6))
    common = dict(
        offered={1: "j1"},
        records={"j1": good_record("j1", 1, attempt=2)},
        events=audit_events([event("j1", "succeeded", attempt=2)]),
        runs=runs,
        model_versions={},
        model_jobs=[],
    )
    before = audit(**common, fenced={"j1": 1}, frozen_at=101.0)
    assert before.duplicated == [] and any("before its executor froze" in n for n in before.notes)
    after = audit(**common, fenced={"j1": 1}, frozen_at=100.3)
    assert after.duplicated == [] and any("after the thaw" in n for n in after.notes)
    assert audit(**common, fenced={}, frozen_at=101.0).duplicated  # not the fenced attempt


def test_a_fenced_attempt_resumed_after_the_other_completed_is_a_note_unless_it_completed_too():
    """Attempt 1's process was frozen with its executor before it wrote its start; attempt 2 did
    the work on another executor (110.0-110.6); after the thaw attempt 1 wrote lines (120.0-120.4)
    until its executor stopped it. Nothing is recorded twice and the work did not run twice to its
    end: a note. Had it reached its end, or not been fenced, the work ran twice."""
    stopped = parse_markers(ticks("j1", 2, 12, 110.0, 110.6) + ticks("j1", 1, 11, 120.0, 120.4, end=False))
    completed = parse_markers(ticks("j1", 2, 12, 110.0, 110.6) + ticks("j1", 1, 11, 120.0, 120.6))

    def audited(runs: list[Run], fenced: dict[str, int]) -> Any:
        return audit(
            offered={1: "j1"},
            records={"j1": good_record("j1", 1, attempt=2)},
            events=audit_events([event("j1", "succeeded", attempt=2)]),
            runs=runs,
            model_versions={},
            model_jobs=[],
            fenced=fenced,
            frozen_at=101.0,
        )

    resumed = audited(stopped, {"j1": 1})
    assert resumed.duplicated == [] and any("resumed after the thaw" in n for n in resumed.notes)
    assert audited(stopped, {}).duplicated  # not fenced: attempt 1 ran after the work was done
    assert audited(completed, {"j1": 1}).duplicated  # fenced, yet it did the work again to its end


# -- a pipeline run after a crash (audit_pipeline_run) ---------------------------------------------

PIPELINE = {
    "name": "p",
    "steps": [
        {"name": "prepare", "job": {"command": ["prep"]}},
        {"name": "flaky", "job": {"command": ["fit", "--token=${{ steps.prepare.outputs.token }}"]}},
        {"name": "fan", "array": "0-1", "job": {"command": ["use", "${{ steps.flaky.outputs.own }}"]}},
    ],
}


def step_record(step: str, attempt: int, command: list[str], index: int | None = None, **more: Any) -> dict:
    labels = {
        "trainyard.dev/pipeline-run": "run-1",
        "trainyard.dev/pipeline-step": step,
        "trainyard.dev/step-attempt": str(attempt),
    }
    if index is not None:
        labels["trainyard.dev/array-index"] = str(index)
    return {"spec": {"labels": labels, "command": command}, **more}


def retried_run() -> tuple[dict, dict]:
    records = {
        "p1": step_record("prepare", 1, ["prep"], outputs={"token": "t-1"}),
        "f1": step_record("flaky", 1, ["fit", "--token=t-1"]),
        "f2": step_record("flaky", 2, ["fit", "--token=t-1"], outputs={"own": "f2"}),
        "a0": step_record("fan", 2, ["use", "f2"], index=0),
        "a1": step_record("fan", 2, ["use", "f2"], index=1),
    }
    run = {
        "run_id": "run-1",
        "steps": {
            "prepare": {"attempt": 1, "jobs": {"0": {"job_id": "p1"}}},
            "flaky": {"attempt": 2, "jobs": {"0": {"job_id": "f2"}}},
            "fan": {"attempt": 2, "jobs": {"0": {"job_id": "a0"}, "1": {"job_id": "a1"}}},
        },
    }
    return run, records


def test_a_clean_retried_run_has_no_findings():
    run, records = retried_run()
    assert audit_pipeline_run(run=run, pipeline=PIPELINE, records=records, kept=["prepare"]) == []


def test_a_step_submitted_twice_a_kept_step_run_again_and_a_wrong_value_are_found():
    run, records = retried_run()
    records["a0-again"] = step_record("fan", 2, ["use", "f2"], index=0)  # a second job, one key
    records["p2"] = step_record("prepare", 2, ["prep"], outputs={"token": "t-2"})  # kept, yet ran
    records["a1"]["spec"]["command"] = ["use", "f1"]  # the failed attempt's value handed on
    findings = audit_pipeline_run(run=run, pipeline=PIPELINE, records=records, kept=["prepare"])
    assert any("fan[0] attempt 2: submitted 2 times" in f for f in findings), findings
    assert any("prepare: succeeded before the retry, submitted again" in f for f in findings), findings
    assert any("fan[1]: job a1 ran ['use', 'f1']" in f for f in findings), findings
    run["steps"]["flaky"]["jobs"]["0"]["job_id"] = "f1"  # the run names the failed attempt's job
    findings = audit_pipeline_run(run=run, pipeline=PIPELINE, records=records)
    assert any("flaky[0]: the run names f1 of another step attempt" in f for f in findings), findings
