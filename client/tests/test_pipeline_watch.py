"""What `pipeline run --wait` says off a terminal: a line for each step change, none for a poll
that changed nothing (the durations alone do not make a line)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from trainyard_client.cli.pipeline_watch import changed_lines, step_views
from trainyard_contracts import JobSpec, JobState
from trainyard_contracts.lifecycle import new_record
from trainyard_contracts.runs import PipelineRun
from trainyard_contracts.workflow import validate_pipeline
from trainyard_workflow.core import JobEnded, JobKnown, advance, evolve_all

pytestmark = [pytest.mark.unit, pytest.mark.workflow]
T0 = datetime(2026, 12, 3, 12, tzinfo=UTC)


def test_a_line_per_step_change_with_its_job_duration_and_array_counts():
    spec = validate_pipeline(
        {
            "name": "p",
            "steps": [
                {"name": "prep", "job": {"name": "prep", "command": ["true"]}},
                {
                    "name": "fit",
                    "depends": ["prep"],
                    "array": "0-2",
                    "job": {"name": "f", "command": ["true"]},
                },
            ],
        }
    )
    run, _ = advance(PipelineRun.start("run-watch-1", spec))
    seen: dict = {}
    assert changed_lines(seen, step_views(run, {}, T0)) == ["prep running", "fit pending 0/3 done, 0 failed"]
    assert changed_lines(seen, step_views(run, {}, T0 + timedelta(seconds=5))) == []

    key = run.steps["prep"].jobs[0].key
    run, _ = advance(
        evolve_all(run, [JobKnown("prep", 0, key, "job-p"), JobEnded("prep", 0, "job-p", "succeeded")])
    )
    record = new_record("job-p", JobSpec(name="prep", command=["true"]), T0, "b")
    ended = record.model_copy(
        update={
            "state": JobState.SUCCEEDED,
            "state_times": {"running": T0, "succeeded": T0 + timedelta(seconds=2)},
        }
    )
    fit = run.steps["fit"].jobs
    run, _ = advance(
        evolve_all(run, [JobKnown("fit", 0, fit[0].key, "job-f0"), JobEnded("fit", 0, "job-f0", "failed")])
    )
    lines = changed_lines(seen, step_views(run, {"job-p": ended}, T0 + timedelta(seconds=9)))
    assert lines == ["prep succeeded job job-p 2.0s", "fit running 0/3 done, 1 failed"]


@pytest.mark.sweep
def test_a_sweep_steps_line_names_its_sweep_and_reads_no_job_record():
    from trainyard_client.cli.pipeline_watch import JobTimes

    sweep = {
        "name": "s",
        "job": {"name": "t", "command": ["true", "${{ params.lr }}"]},
        "space": {"lr": {"type": "float", "low": 0.01, "high": 0.1}},
        "objective": {"metric": "loss", "direction": "minimize"},
    }
    run, _ = advance(
        PipelineRun.start(
            "run-watch-2", validate_pipeline({"name": "p", "steps": [{"name": "search", "sweep": sweep}]})
        )
    )
    key = run.steps["search"].jobs[0].key
    run, _ = advance(evolve_all(run, [JobKnown("search", 0, key, "sw0123")]))
    assert changed_lines({}, step_views(run, {}, T0)) == ["search running sweep sw0123"]
    read: list[str] = []
    JobTimes(lambda job_id: read.append(job_id)).refresh(run)
    assert read == []  # a sweep is no job: nothing to read, no 404 per poll
