"""A sweep as a pipeline step, on a real nats-server with the real submission API, scheduler,
local executor (real processes) and workflow service: the run starts the sweep once, a later step
takes the best trial's parameters and objective from its outputs, a cancel of the run cancels the
sweep and its trials, a retried run starts a new sweep under the step's next attempt, and a team's
sweeps and steps land in the team's queue."""

from __future__ import annotations

import json
import sys

import pytest

from trainyard_contracts.sweeps import SweepReply
from trainyard_contracts.workflow import RUN_LABEL, STEP_LABEL
from trainyard_shared.testing.helpers import eventually
from trainyard_workflow.core import idempotency_key
from trainyard_workflow.sweep_step import sweep_id_for

pytestmark = [pytest.mark.service, pytest.mark.workflow, pytest.mark.sweep, pytest.mark.local]

# a trial: reports score=x once (and fails while the file named by its second argument is missing)
TRIAL = (
    "import os, sys, trainyard\n"
    "if len(sys.argv) > 2 and not os.path.exists(sys.argv[2]):\n"
    "    sys.exit('no ' + sys.argv[2])\n"
    "trainyard.report(0, score=float(sys.argv[1]))\n"
)


def sweep_step(name="search", args=(), **over):
    sweep = {
        "name": "toy",
        "job": {"name": "toy-trial", "command": ["python3", "-c", TRIAL, "${{ params.x }}", *args]},
        "space": {"x": {"type": "categorical", "choices": [3, 7]}},
        "objective": {"metric": "score", "direction": "maximize"},
        "sampler": {"type": "grid"},
        "max_trials": 2,
        "max_parallel": 2,
        **over,
    }
    return {"name": name, "sweep": sweep}


SWEEP_THEN_USE = {
    "name": "sweep-then-use",
    "steps": [
        sweep_step(),
        {
            "name": "use",
            "depends": ["search"],
            "job": {
                "name": "use",
                "command": [
                    "echo",
                    "x=${{ steps.search.outputs.x }}",
                    "score=${{ steps.search.outputs.objective }}",
                    "trial=${{ steps.search.outputs.trial }}",
                ],
                "params": {"x": "${{ steps.search.outputs.x }}"},
            },
        },
    ],
}


async def ask_sweep(client, verb: str, **body) -> SweepReply:
    msg = await client.nc.request(
        f"{client.prefix}.workflow.sweep-{verb}", json.dumps(body).encode(), timeout=30
    )
    return SweepReply.model_validate_json(msg.data)


async def test_a_sweep_step_hands_its_best_trial_to_the_next_step(bus, workflow_stack):
    async with workflow_stack() as client:
        started = await client.ask("run", pipeline=SWEEP_THEN_USE, by="tester")
        assert started.ok, started.errors
        run = await client.ended(started.run.run_id, timeout=120)
        assert run.state.value == "succeeded", run.steps
        # the step's "job" is its sweep, whose id derives from the run, the step and its attempt
        sweep_id = run.steps["search"].jobs[0].job_id
        assert sweep_id == sweep_id_for(idempotency_key(run.run_id, "search", 0, 1))
        sweep = (await ask_sweep(client, "get", name=sweep_id)).sweep
        assert sweep.state.value == "succeeded" and sweep.owner.run_id == run.run_id
        assert sweep.created_by == "tester" and len(sweep.trials) == 2  # one sweep, its two trials
        best = sweep.best_trial()
        assert best.params == {"x": 7} and best.value == 7.0
        trial_job = await bus.record(best.job_id)
        assert (
            trial_job.spec.labels[RUN_LABEL] == run.run_id and trial_job.spec.labels[STEP_LABEL] == "search"
        )
        use = await bus.record(run.steps["use"].jobs[0].job_id)
        assert use.spec.command == ["echo", "x=7", "score=7.0", f"trial={best.number}"]
        assert use.spec.params["x"] == 7  # exactly one reference: the value's type
        listed = (await ask_sweep(client, "list")).sweeps
        assert [s.sweep_id for s in listed] == [sweep_id]  # taken again by the look-over: still one


SLOW_TRIAL = {
    "name": "slow-trial",
    "command": [sys.executable, "-c", "import time; time.sleep(120)", "${{ params.x }}"],
}


async def _running_trial(client, bus, run_id):
    """(sweep id, job id) once the run's sweep step's first trial's job runs, else None."""
    reply = await client.ask("status", run_id=run_id)
    job = reply.run.steps["search"].jobs.get(0)
    sweep = (await ask_sweep(client, "get", name=job.job_id)).sweep if job and job.job_id else None
    trial = sweep.trials[0].job_id if sweep and sweep.trials and sweep.trials[0].job_id else None
    record = await bus.record(trial) if trial else None
    return (sweep.sweep_id, trial) if record and record.state.value == "running" else None


async def test_cancelling_the_run_cancels_its_sweep_and_the_trials_jobs(bus, workflow_stack):
    slow = {"name": "slow", "steps": [sweep_step(job=SLOW_TRIAL, max_trials=1)]}
    async with workflow_stack() as client:
        run_id = (await client.http.post("/v1/pipelines", json={"pipeline": slow})).json()["run_id"]

        async def trial_running():
            return await _running_trial(client, bus, run_id)

        sweep_id, job_id = await eventually(trial_running, 60, "the sweep's trial running")
        cancelled = await client.http.post(f"/v1/pipelines/{run_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        assert (await bus.wait_state(job_id, "cancelled", timeout=60)).state.value == "cancelled"
        sweep = (await ask_sweep(client, "get", name=sweep_id)).sweep
        assert sweep.state.value == "cancelled"
        run = await client.ask("status", run_id=run_id)
        assert run.run.steps["search"].state.value == "cancelled"


async def test_a_sweep_whose_step_ended_without_a_word_is_cancelled_by_the_look_over(bus, workflow_stack):
    """A crash between the run's cancel and the sweep's: the run's record says the step ended
    while its sweep still runs. The sweeps' look-over finds the step no longer wants it."""
    from trainyard_contracts.runs import RunState, StepState
    from trainyard_workflow.store import RunStore

    slow = {"name": "slow", "steps": [sweep_step(job=SLOW_TRIAL, max_trials=1)]}
    async with workflow_stack() as client:
        run_id = (await client.ask("run", pipeline=slow)).run.run_id

        async def trial_running():
            return await _running_trial(client, bus, run_id)

        sweep_id, job_id = await eventually(trial_running, 60, "the sweep's trial running")
        runs = RunStore(await bus.js.key_value(bus.subjects.buckets.pipelines))

        def ended_without_a_word(run):
            step = run.steps["search"].model_copy(update={"state": StepState.cancelled})
            return run.model_copy(update={"state": RunState.cancelled, "steps": {"search": step}}), None

        await runs.mutate(run_id, ended_without_a_word)
        assert (await bus.wait_state(job_id, "cancelled", timeout=60)).state.value == "cancelled"
        sweep = (await ask_sweep(client, "get", name=sweep_id)).sweep
        assert sweep.state.value == "cancelled"


async def test_a_failed_sweep_fails_its_step_and_a_retry_starts_a_new_sweep(tmp_path, bus, workflow_stack):
    flag = tmp_path / "ready"
    pipeline = {"name": "flaky", "steps": [sweep_step(args=(str(flag),), max_failed=0)]}
    async with workflow_stack() as client:
        run_id = (await client.ask("run", pipeline=pipeline)).run.run_id
        run = await client.ended(run_id, timeout=120)
        first = run.steps["search"].jobs[0].job_id
        assert run.state.value == "failed" and run.steps["search"].state.value == "failed"
        assert f"the sweep {first} failed" in run.steps["search"].reason
        flag.write_text("ok")
        again = await client.ask("retry", run_id=run_id, attempt=1)
        assert again.ok, again.errors
        run = await client.ended(run_id, timeout=120)
        second = run.steps["search"].jobs[0].job_id
        assert run.state.value == "succeeded" and run.steps["search"].attempt == 2
        assert second == sweep_id_for(idempotency_key(run_id, "search", 0, 2)) != first
        assert (await ask_sweep(client, "get", name=first)).sweep.state.value == "failed"  # as it was
        assert (await ask_sweep(client, "get", name=second)).sweep.best_trial().params == {"x": 7}


async def test_a_teams_sweep_and_pipeline_steps_land_in_the_teams_queue(workflow_stack):
    """A team's jobs without a queue go to the team's queue; so do its sweeps' trials and its
    pipelines' steps (sweep steps too), which the workflow service submits with its own identity."""
    async with workflow_stack() as client:
        http = client.http
        queue = await http.put("/v1/queues/team-a", json={"allow_anonymous_bus": True})
        assert queue.status_code in (200, 201), queue.text
        token = (await http.post("/v1/tokens", json={"team": "team-a"})).json()["token"]
        team = {"Authorization": f"Bearer {token}"}
        sweep = (await http.post("/v1/sweeps", json=sweep_step()["sweep"], headers=team)).json()
        assert sweep["spec"]["job"]["queue"] == "team-a", sweep
        pipeline = {
            "name": "team-run",
            "steps": [sweep_step(), {"name": "after", "job": {"name": "a", "command": ["true"]}}],
        }
        run = (await http.post("/v1/pipelines", json={"pipeline": pipeline}, headers=team)).json()
        steps = run["spec"]["steps"]
        assert steps[0]["sweep"]["job"]["queue"] == "team-a" and steps[1]["job"]["queue"] == "team-a", run
        for trial in sweep["trials"]:
            if trial["job_id"]:
                assert (await http.get(f"/v1/jobs/{trial['job_id']}", headers=team)).json()["spec"][
                    "queue"
                ] == "team-a"
        await http.post(f"/v1/sweeps/{sweep['sweep_id']}/cancel", headers=team)
        await http.post(f"/v1/pipelines/{run['run_id']}/cancel", headers=team)
        # schedules and triggers store their pipelines (or job) placed the same way
        schedule = {"name": "team-nightly", "cron": "0 3 * * *", "suspended": True, "pipeline": pipeline}
        created = await http.post("/v1/schedules", json=schedule, headers=team)
        assert created.status_code == 201, created.text
        trigger = {
            "name": "team-on",
            "subject": f"{client.prefix}.trigger.team",
            "job": {"name": "j", "command": ["true"]},
        }
        fired = await http.post("/v1/triggers", json=trigger, headers=team)
        assert fired.status_code == 201, fired.text
        for made in (created.json(), fired.json()):
            assert set(queues(made)) == {"team-a"}, made


def queues(document) -> list[str]:
    """Every ``queue`` named anywhere in ``document``."""
    if isinstance(document, dict):
        return [q for k, v in document.items() for q in ([v] if k == "queue" else queues(v))]
    if isinstance(document, list):
        return [q for item in document for q in queues(item)]
    return []
