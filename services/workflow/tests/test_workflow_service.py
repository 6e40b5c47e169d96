"""The workflow service on a real nats-server, with the real submission, scheduler and executor
(local backend: real processes) in this process: pipelines submitted over the bus request, their
steps through the bus intake, their ends from the job events."""

from __future__ import annotations

import json

import pytest

from trainyard_contracts.runs import PipelineReply, PipelineRun
from trainyard_shared.testing.helpers import common_settings, eventually
from trainyard_submission.app import create_app as submission_app
from trainyard_submission.settings import SubmissionSettings
from trainyard_workflow.core import RUN_LABEL

pytestmark = [pytest.mark.service, pytest.mark.workflow, pytest.mark.local]

FAILING_BRANCH = {
    "name": "retrain",
    "params": {"word": "hello"},
    "steps": [
        {"name": "prepare", "job": {"name": "prepare", "command": ["echo", "${{ params.word }}"]}},
        {"name": "train", "depends": ["prepare"], "job": {"name": "train", "command": ["false"]}},
        {"name": "evaluate", "depends": ["train"], "job": {"name": "evaluate", "command": ["true"]}},
        {"name": "report", "depends": {"train": "failed"}, "job": {"name": "report", "command": ["true"]}},
    ],
}


async def test_a_failing_branch_skips_its_dependent_and_runs_its_handler(prefix, bus, workflow_stack):
    async with workflow_stack() as client:
        started = await client.ask("run", pipeline=FAILING_BRANCH, params={"word": "bonjour"}, by="tester")
        assert started.ok and started.status == 201 and started.run is not None
        run = await client.ended(started.run.run_id)

        states = {name: step.state.value for name, step in run.steps.items()}
        assert states == {
            "prepare": "succeeded",
            "train": "failed",
            "evaluate": "skipped",
            "report": "succeeded",
        }
        assert run.state.value == "succeeded"  # the failure was handled by `report`
        assert "train (failed, needed succeeded)" in (run.steps["evaluate"].reason or "")
        prepare_job = run.steps["prepare"].jobs[0].job_id
        record = await bus.record(prepare_job)
        assert record.spec.command == ["echo", "bonjour"]  # -p overrides the document's default
        assert record.spec.labels[RUN_LABEL] == run.run_id
        assert "bonjour" in await bus.log_text(prepare_job)
        events = await bus.messages(f"{prefix}.pipeline.{run.run_id}.>", bus.subjects.streams.pipelines)
        kinds = [json.loads(m.data)["type"] for m in events]
        assert kinds[0] == "started" and kinds[-1] == "finished"
        assert kinds.count("step_submitted") == 3 and kinds.count("step_ended") == 4


async def test_an_array_step_runs_every_index_under_its_limit(workflow_stack):
    pipeline = {
        "name": "sweep",
        "steps": [{"name": "fit", "array": "0-4%2", "job": {"name": "fit", "command": ["true"]}}],
    }
    async with workflow_stack() as client:
        started = await client.ask("run", pipeline=pipeline)
        run = await client.ended(started.run.run_id)
        assert run.state.value == "succeeded"
        jobs = run.steps["fit"].jobs
        assert sorted(jobs) == [0, 1, 2, 3, 4] and len({j.job_id for j in jobs.values()}) == 5
        listed = await client.ask("list")
        assert [r.run_id for r in listed.runs] == [run.run_id]


async def test_bad_requests_get_field_errors_and_the_service_keeps_answering(prefix, workflow_stack):
    async with workflow_stack() as client:
        bad = await client.ask("run", pipeline={"name": "p", "steps": [{"name": "a", "job": {"name": "a"}}]})
        assert not bad.ok and bad.status == 422
        assert {e.field for e in bad.errors} == {"steps.0.job.command"}
        cycle = await client.ask(
            "run",
            pipeline={
                "name": "p",
                "steps": [
                    {"name": "a", "depends": ["b"], "job": {"name": "a", "command": ["true"]}},
                    {"name": "b", "depends": ["a"], "job": {"name": "b", "command": ["true"]}},
                ],
            },
        )
        assert cycle.status == 422 and cycle.errors[0].field == "steps" and "cycle" in cycle.errors[0].message
        missing = await client.ask("status", run_id="nosuchrun1")
        assert missing.status == 404 and missing.errors[0].field == "run_id"
        garbage = await client.nc.request(f"{client.prefix}.workflow.status", b"{not json", timeout=10)
        assert PipelineReply.model_validate_json(garbage.data).status == 400
        assert (await client.ask("list")).ok


async def test_a_restart_between_sending_and_recording_never_submits_a_step_twice(
    nats_server, prefix, tmp_path, bus, workflow_stack
):
    """What a workflow service killed after sending a step's job, before recording the answer,
    leaves behind: the run's record with the submission recorded and unanswered, the job in the
    intake. The service started again sends it under the same key and gets the same job back."""
    from trainyard_contracts.workflow import validate_pipeline
    from trainyard_workflow.core import advance, job_spec_for

    spec = validate_pipeline(
        {"name": "once", "steps": [{"name": "only", "job": {"name": "o", "command": ["true"]}}]}
    )
    run, taken = advance(PipelineRun.start("run-crashed1", spec))
    (submit,) = taken
    common = common_settings(nats_server.url, prefix, tmp_path / "data")
    api = submission_app(common, SubmissionSettings(token="workflow-test-token-1"))
    async with api.router.lifespan_context(api):
        kv = await bus.js.key_value(bus.subjects.buckets.pipelines)
        await kv.create(run.run_id, run.model_dump_json().encode())
        # as the workflow service sends it: on its own intake subject, under the step's key
        inbox = bus.nc.new_inbox()
        replies = await bus.nc.subscribe(inbox, max_msgs=1)
        body = job_spec_for(run, "only", 0).model_dump_json().encode()
        headers = {"Nats-Msg-Id": submit.key, "Trainyard-Reply-To": inbox}
        await bus.js.publish(bus.subjects.intake_workflow, body, headers=headers)
        first = json.loads((await replies.next_msg(timeout=30)).data)
    async with workflow_stack() as client:
        ended = await client.ended(run.run_id)
    assert ended.state.value == "succeeded"
    assert ended.steps["only"].jobs[0].job_id == first["job_id"]
    jobs_kv = await bus.js.key_value(bus.subjects.buckets.jobs)
    labelled = []
    for key in await jobs_kv.keys():
        record = await bus.record(key)
        if record and record.spec.labels.get(RUN_LABEL) == run.run_id:
            labelled.append(key)
    assert labelled == [first["job_id"]]


async def test_pipelines_over_http_one_url_one_token(workflow_stack):
    """POST/GET /v1/pipelines on the submission API, answered by the workflow service over NATS:
    a 3-step pipeline whose middle step fails ends with its last step skipped."""
    pipeline = {
        "name": "three",
        "steps": [
            {"name": "prepare", "job": {"name": "prepare", "command": ["true"]}},
            {"name": "train", "depends": ["prepare"], "job": {"name": "train", "command": ["false"]}},
            {"name": "evaluate", "depends": ["train"], "job": {"name": "evaluate", "command": ["true"]}},
        ],
    }
    async with workflow_stack() as client:
        http = client.http
        assert (
            await http.post("/v1/pipelines", json={"pipeline": pipeline}, headers={"Authorization": ""})
        ).status_code == 401
        bad = await http.post("/v1/pipelines", json={"pipeline": {**pipeline, "steps": []}})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "steps"
        # a step naming a queue that does not exist is refused with the run, not when its turn comes
        steps = [
            *pipeline["steps"][:2],
            {**pipeline["steps"][2], "job": {**pipeline["steps"][2]["job"], "queue": "nosuch"}},
        ]
        unknown = await http.post("/v1/pipelines", json={"pipeline": {**pipeline, "steps": steps}})
        assert unknown.status_code == 422, unknown.text
        [error] = unknown.json()["errors"]
        assert error["field"] == "steps.2.job.queue" and "unknown queue 'nosuch'" in error["message"]
        assert (await http.get("/v1/pipelines")).json()["runs"] == []
        created = await http.post("/v1/pipelines", json={"pipeline": pipeline})
        assert created.status_code == 201, created.text
        run_id = created.json()["run_id"]

        async def ended():
            body = (await http.get(f"/v1/pipelines/{run_id}")).json()
            return body if body["state"] != "running" else None

        run = await eventually(ended, 60, "the pipeline ended")
        assert {n: s["state"] for n, s in run["steps"].items()} == {
            "prepare": "succeeded",
            "train": "failed",
            "evaluate": "skipped",
        }
        assert run["state"] == "failed" and run["submitted_by"] == "api"
        listed = (await http.get("/v1/pipelines")).json()["runs"]
        assert [r["run_id"] for r in listed] == [run_id]
        assert (await http.get("/v1/pipelines/nosuchrun1")).status_code == 404
        ended_cancel = await http.post(f"/v1/pipelines/{run_id}/cancel")
        assert ended_cancel.status_code == 200 and ended_cancel.json()["state"] == "failed"  # already ended


async def test_cancel_over_http_stops_the_running_step_and_starts_nothing_more(bus, workflow_stack):
    import sys

    pipeline = {
        "name": "long",
        "steps": [
            {
                "name": "sleep",
                "job": {"name": "sleep", "command": [sys.executable, "-c", "import time; time.sleep(120)"]},
            },
            {
                "name": "after",
                "depends": {"sleep": "finished"},
                "job": {"name": "after", "command": ["true"]},
            },
        ],
    }
    async with workflow_stack() as client:
        http = client.http
        run_id = (await http.post("/v1/pipelines", json={"pipeline": pipeline})).json()["run_id"]

        async def sleeping():
            body = (await http.get(f"/v1/pipelines/{run_id}")).json()
            job = body["steps"]["sleep"]["jobs"].get("0", {}).get("job_id")
            record = await bus.record(job) if job else None
            return job if record and record.state.value == "running" else None

        job_id = await eventually(sleeping, 60, "the first step's job running")
        cancelled = await http.post(f"/v1/pipelines/{run_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        record = await bus.wait_state(job_id, "cancelled", timeout=60)
        assert record.state.value == "cancelled"
        run = (await http.get(f"/v1/pipelines/{run_id}")).json()
        assert {n: s["state"] for n, s in run["steps"].items()} == {
            "sleep": "cancelled",
            "after": "cancelled",
        }
        assert run["steps"]["after"]["jobs"] == {}  # nothing more was submitted
