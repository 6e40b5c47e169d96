"""The step cache's pure parts: a ``cache: true`` step looks before anything is submitted, a hit
ends it with the earlier jobs, a miss submits; the key changes with what makes the result (the
rendered spec, the inputs, the submitter and queue) and with nothing else."""

from __future__ import annotations

import pytest

from trainyard_contracts import JobSpec, SpecError
from trainyard_contracts.runs import ChildJob, PipelineRun, RunState, StepState
from trainyard_contracts.workflow import PipelineSpec, validate_pipeline
from trainyard_workflow.core import (
    CacheHit,
    CacheMiss,
    Cancel,
    JobEnded,
    JobKnown,
    LookUp,
    Submit,
    advance,
    evolve_all,
    pending_lookups,
    retry,
    unanswered,
)
from trainyard_workflow.stepcache import cache_key, job_identity

pytestmark = [pytest.mark.unit, pytest.mark.workflow]
KEY = "a" * 64


def started(array: str | None = None) -> PipelineRun:
    train: dict = {
        "name": "train",
        "depends": ["prepare"],
        "cache": True,
        "job": {"name": "t", "command": ["true"]},
    }
    if array:
        train["array"] = array
    spec = PipelineSpec.model_validate(
        {"name": "p", "steps": [{"name": "prepare", "job": {"name": "p", "command": ["true"]}}, train]}
    )
    return advance(PipelineRun.start("run-000001", spec))[0]


def prepared(array: str | None = None) -> PipelineRun:
    run = started(array)
    key = run.steps["prepare"].jobs[0].key
    return advance(
        evolve_all(run, [JobKnown("prepare", 0, key, "p1"), JobEnded("prepare", 0, "p1", "succeeded")])
    )[0]


def test_a_cached_step_looks_before_anything_is_submitted():
    run, taken = advance(
        evolve_all(started(), [JobKnown("prepare", 0, "workflow:run-000001:prepare:0:1", "p1")])
    )
    assert not any(isinstance(d, LookUp) for d in taken)  # its dependency has not ended
    run = prepared()
    assert run.steps["train"].cache is not None and run.steps["train"].cache.state == "lookup"
    assert run.steps["train"].jobs == {} and unanswered(run) == []
    assert pending_lookups(run) == ["train"]
    assert advance(run)[1] == []  # nothing more until the answer


def test_a_hit_ends_the_step_with_the_earlier_jobs_and_submits_nothing():
    earlier = {0: ChildJob(key="workflow:old:train:0:1", job_id="t0", outcome="succeeded")}
    run, taken = advance(evolve_all(prepared(), [CacheHit("train", KEY, "old-run", earlier)]))
    step = run.steps["train"]
    assert step.state == StepState.succeeded and step.jobs == earlier
    assert step.cache is not None and (step.cache.state, step.cache.from_run, step.cache.key) == (
        "hit",
        "old-run",
        KEY,
    )
    assert not any(isinstance(d, Submit) for d in taken)
    assert run.state == RunState.succeeded
    # a second answer (a lookup redone after a crash) changes nothing
    assert evolve_all(run, [CacheMiss("train", "b" * 64)]) == run


def test_a_miss_submits_and_keeps_the_key():
    run, taken = advance(evolve_all(prepared("0-2%2"), [CacheMiss("train", KEY)]))
    assert [d.index for d in taken if isinstance(d, Submit)] == [0, 1]  # %2 as ever
    assert run.steps["train"].cache.state == "miss" and run.steps["train"].cache.key == KEY
    assert pending_lookups(run) == []
    # the hit of an array: every index's job at once
    jobs = {i: ChildJob(key=f"k{i}", job_id=f"t{i}", outcome="succeeded") for i in range(3)}
    hit = advance(evolve_all(prepared("0-2%2"), [CacheHit("train", KEY, "old", jobs)]))[0]
    assert hit.steps["train"].state == StepState.succeeded and len(hit.steps["train"].jobs) == 3


def test_a_cancel_while_looking_ends_the_step_and_a_retry_looks_again():
    run = advance(evolve_all(prepared(), [Cancel()]))[0]
    assert run.steps["train"].state == StepState.cancelled and run.state == RunState.cancelled
    again = advance(retry(run))[0]
    assert again.steps["train"].attempt == 2 and again.steps["train"].cache.state == "lookup"


def job(**fields) -> JobSpec:
    return JobSpec.model_validate({"name": "t", "command": ["python", "train.py"], **fields})


def test_the_key_follows_the_spec_the_inputs_and_the_owner_and_nothing_else():
    inputs = {"prepare": {"state": "succeeded", "jobs": [job_identity({"split": "v1", "rows": 3})]}}
    base = cache_key(owner="team-a", job=job(), array=None, inputs=inputs)
    assert base == cache_key(owner="team-a", job=job(), array=None, inputs=dict(reversed(inputs.items())))
    reordered = {"prepare": {"jobs": [job_identity({"rows": 3, "split": "v1"})], "state": "succeeded"}}
    assert base == cache_key(owner="team-a", job=job(), array=None, inputs=reordered)
    different = [
        cache_key(owner="team-b", job=job(), array=None, inputs=inputs),
        cache_key(owner="team-a", job=job(queue="gpu"), array=None, inputs=inputs),
        cache_key(
            owner="team-a", job=job(command=["python", "train.py", "--lr=0.2"]), array=None, inputs=inputs
        ),
        cache_key(owner="team-a", job=job(), array="0-3", inputs=inputs),
        cache_key(
            owner="team-a",
            job=job(),
            array=None,
            inputs={"prepare": {"state": "succeeded", "jobs": [job_identity({"split": "v2", "rows": 3})]}},
        ),
        cache_key(owner="team-a", job=job(), array=None, inputs={"prepare": {"state": "failed"}}),
        # the dependencies' outputs folders ($TRAINYARD_INPUTS) are in the job as it is submitted
        cache_key(
            owner="team-a",
            job=job(inputs=[{"path": "prepare", "digest": "sha256:" + "1" * 64}]),
            array=None,
            inputs=inputs,
        ),
        cache_key(
            owner="team-a",
            job=job(inputs=[{"path": "prepare", "digest": "sha256:" + "2" * 64}]),
            array=None,
            inputs=inputs,
        ),
        cache_key(owner="team-a", job=job(pass_outputs=True), array=None, inputs=inputs),
    ]
    assert len({base, *different}) == 1 + len(different)
    # a source credential is a secret, not what the job computes: it does not change the key
    with_secret = job(source={"repo": "https://token1@example.com/r.git", "commit": "a" * 40})
    other_secret = job(source={"repo": "https://token2@example.com/r.git", "commit": "a" * 40})
    assert cache_key(owner="t", job=with_secret, array=None, inputs={}) == cache_key(
        owner="t", job=other_secret, array=None, inputs={}
    )


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (
            {
                "sweep": {
                    "name": "s",
                    "job": {"name": "j", "command": ["x", "${{ params.lr }}"]},
                    "space": {"lr": {"type": "float", "low": 0.01, "high": 0.1}},
                    "objective": {"metric": "m", "direction": "minimize"},
                }
            },
            "sweep step is not cached",
        ),
        ({"job": {"name": "j", "command": ["true"]}, "array": "0-1000"}, "at most 1000 indices"),
    ],
)
def test_cache_is_refused_where_it_cannot_hold(step, message):
    with pytest.raises(SpecError) as caught:
        validate_pipeline({"name": "p", "steps": [{"name": "s", "cache": True, **step}]})
    assert any(e.field == "steps.0.cache" and message in e.message for e in caught.value.errors), (
        caught.value.errors
    )
