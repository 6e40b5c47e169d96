"""The web UI's pictures, pure: a pipeline run's DAG laid out by dependency depth, a sweep's
trials best first, a chart's axis, a queue's bounded history and its charts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from trainyard_contracts.runs import PipelineRun, StepState
from trainyard_contracts.sweeps import Direction, SweepRecord, Trial, TrialState, validate_sweep
from trainyard_contracts.workflow import validate_pipeline
from trainyard_submission.ui.queuestats import QueueHistory, QueueNow
from trainyard_submission.ui.svg import (
    Chart,
    Series,
    dag_steps,
    dag_svg,
    line_chart,
    nice_ceiling,
    queue_charts,
    step_columns,
    tick_minutes,
)
from trainyard_submission.ui.workflows import objective_chart, ranked

pytestmark = pytest.mark.unit


def test_a_step_sits_one_column_past_its_deepest_dependency() -> None:
    columns = step_columns({"a": (), "b": ("a",), "c": ("a", "b"), "d": (), "e": ("c", "d")})
    assert columns == {"a": 0, "b": 1, "c": 2, "d": 0, "e": 3}
    assert step_columns({"x": ("y",), "y": ("x",)}) in ({"x": 1, "y": 0}, {"x": 0, "y": 1})  # no loop forever


def test_the_dag_colours_steps_by_state_counts_an_array_and_escapes_names() -> None:
    spec = validate_pipeline(
        {
            "name": "p",
            "steps": [
                {"name": "prep", "job": {"name": "prep", "command": ["true"]}},
                {
                    "name": "fit",
                    "depends": ["prep"],
                    "array": "0-3",
                    "job": {"name": "fit", "command": ["true"]},
                },
                {"name": "on-fail", "depends": {"fit": "failed"}, "job": {"name": "x", "command": ["true"]}},
                {
                    "name": "tune",
                    "depends": ["prep"],
                    "sweep": {
                        "name": "tune",
                        "job": {"name": "t", "command": ["true"]},
                        "space": {"x": {"type": "float", "low": 0, "high": 1}},
                        "objective": {"metric": "loss", "direction": "minimize"},
                    },
                },
            ],
        },
        {},
    )
    run = PipelineRun.start("run-0001", spec)
    steps = {**run.steps, "prep": run.steps["prep"].model_copy(update={"state": StepState.succeeded})}
    run = run.model_copy(update={"steps": steps})
    laid = {s.name: s for s in dag_steps(run)}
    assert [laid[n].column for n in ("prep", "fit", "on-fail")] == [0, 1, 2]
    assert laid["fit"].detail == "0 done · 0 failed · 4 total" and laid["prep"].state == "succeeded"
    assert laid["tune"].detail == "no sweep yet" and laid["tune"].column == 1
    picture = str(dag_svg(run))
    assert 'data-step="prep" data-state="succeeded"' in picture and "edge-failed" in picture


def test_a_sweep_steps_box_names_and_links_its_sweep() -> None:
    from trainyard_contracts.runs import ChildJob

    sweep_spec = {
        "name": "s",
        "job": {"name": "t", "command": ["true", "${{ params.x }}"]},
        "space": {"x": {"type": "float", "low": 0, "high": 1}},
        "objective": {"metric": "loss", "direction": "minimize"},
    }
    spec = validate_pipeline({"name": "p", "steps": [{"name": "search", "sweep": sweep_spec}]}, {})
    run = PipelineRun.start("run-0002", spec)
    job = ChildJob(key="workflow:run-0002:search:0:1", job_id="sw0123")
    steps = {"search": run.steps["search"].model_copy(update={"state": StepState.running, "jobs": {0: job}})}
    (box,) = dag_steps(run.model_copy(update={"steps": steps}))
    assert (box.detail, box.href) == ("sweep sw0123", "/ui/sweeps/sw0123")


def sweep(values: list[float | None], direction: str) -> SweepRecord:
    spec = validate_sweep(
        {
            "name": "s",
            "job": {"name": "t", "command": ["true"]},
            "space": {"x": {"type": "float", "low": 0, "high": 1}},
            "objective": {"metric": "loss", "direction": direction},
        }
    )
    trials = [
        Trial(
            number=i,
            params={"x": 0.5},
            key=f"k{i}",
            value=v,
            state=TrialState.complete if v is not None else TrialState.failed,
        )
        for i, v in enumerate(values)
    ]
    return SweepRecord(sweep_id="s1", spec=spec, trials=trials)


def test_trials_come_best_first_for_either_direction_and_the_best_so_far_line_never_worsens() -> None:
    low = sweep([0.5, None, 0.2, 0.9], "minimize")
    assert [t.number for t in ranked(low.trials, Direction.minimize)] == [2, 0, 3, 1]
    assert [t.number for t in ranked(low.trials, Direction.maximize)] == [3, 0, 2, 1]
    best = objective_chart(low).series[1].points
    assert best == [(0, 0.5), (2, 0.2), (3, 0.2)]
    assert str(line_chart(objective_chart(low))).count("<circle") == 3


def test_a_chart_axis_tops_at_a_round_number_and_takes_no_points() -> None:
    assert [nice_ceiling(v) for v in (0, 0.7, 3, 11, 4500)] == [1, 1, 5, 20, 5000]
    empty = line_chart(Chart("nothing yet", "time", "jobs", [Series("depth", "s-depth", [])]))
    assert "<svg" in str(empty) and "polyline" not in str(empty)


def test_a_queues_history_keeps_its_newest_samples_and_counts_a_drained_queue_as_zero() -> None:
    history = QueueHistory(keep=3)
    t0 = datetime(2026, 12, 3, tzinfo=UTC)
    for i in range(5):
        waiting = QueueNow(pending=i, oldest_pending_ns=int((t0.timestamp() - 60) * 1e9))
        history.add(t0 + timedelta(minutes=i), {"busy": waiting}, known=["default"])
    assert [s.pending for s in history.of("busy")] == [2, 3, 4]  # bounded: the newest 3
    assert history.of("busy")[-1].longest_wait_seconds == 5 * 60
    assert [s.pending for s in history.of("default")] == [0, 0, 0]
    depth, wait = queue_charts("busy", history.of("busy"))
    assert "polyline" in str(depth) and "-1 min" in str(depth) and "longest wait" in str(wait)
    assert queue_charts("none", []) == ("", "")
    assert tick_minutes(300) == [240, 120] and tick_minutes(0.5) == []
