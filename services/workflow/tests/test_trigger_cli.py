"""``trainyard trigger …`` and ``/v1/triggers`` against the real submission API (uvicorn on
127.0.0.1) and the real workflow service on a real nats-server; the CLI runs in a thread, as a
user's terminal would."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import nats
import pytest

from trainyard_shared.testing.helpers import common_settings, eventually, running
from trainyard_submission.app import create_app as submission_app
from trainyard_submission.settings import SubmissionSettings
from trainyard_workflow.app import create_app as workflow_app
from trainyard_workflow.settings import WorkflowSettings

from .conftest import served
from .test_schedule_cli import trainyard

pytestmark = [pytest.mark.service, pytest.mark.workflow]
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "pipelines" / "on-digits-published.yaml"
TOKEN = "schedule-cli-admin-1"  # test_schedule_cli.trainyard's


async def test_the_example_trigger_from_the_cli_fires_on_a_plain_event_and_teams_see_their_own(
    nats_server, prefix, tmp_path
):
    foreign = f"ext-{prefix}"
    document = EXAMPLE.read_text().replace("datasets.digits.published", f"{foreign}.digits.published")
    trigger_file = tmp_path / "trigger.yaml"
    trigger_file.write_text(document.replace("debounce_seconds: 30", "debounce_seconds: 0"))

    def common(name):
        settings = common_settings(nats_server.url, prefix, tmp_path / name)
        return settings.model_copy(update={"trigger_subjects": [f"{foreign}.>"]})

    api = submission_app(common("api"), SubmissionSettings(token=TOKEN))
    workflow = workflow_app(common("wf"), WorkflowSettings(schedule_tick_seconds=0.05, replica_id="cli"))
    async with api.router.lifespan_context(api), served(api) as url, running(workflow):
        created = await trainyard(url, "trigger", "create", str(trigger_file), "-o", "json")
        assert created.exit_code == 0, created.output
        assert json.loads(created.output)["spec"]["dedupe_key"] == "version"
        outside = tmp_path / "outside.yaml"
        outside.write_text(document.replace(f"{foreign}.digits.published", f"{prefix}.job.*.succeeded"))
        refused = await trainyard(url, "trigger", "create", str(outside))
        assert refused.exit_code == 2 and "subject" in refused.output

        publisher = await nats.connect(nats_server.url)
        event = {"kind": "full", "version": "2026-12-03", "rows": 1797}
        await publisher.publish(f"{foreign}.digits.published", json.dumps(event).encode())
        await publisher.flush()
        await publisher.close()

        async def fired():
            shown = await trainyard(url, "trigger", "get", "retrain-on-digits", "-o", "json")
            record = json.loads(shown.output)
            return record if record["fired"] == 1 and not record["pending"] else None

        record = await eventually(fired, 30, "the event fired the trigger")
        run = await trainyard(url, "pipeline", "status", record["last_run_id"], "-o", "json")
        assert json.loads(run.output)["spec"]["params"] == {"version": "2026-12-03", "rows": 1797}
        listed = await trainyard(url, "trigger", "list")
        assert "retrain-on-digits" in listed.output and "fired 1" in listed.output

        # suspended: an event is counted and fires nothing, then or after the resume
        suspended = await trainyard(url, "trigger", "suspend", "retrain-on-digits", "-o", "json")
        assert suspended.exit_code == 0 and json.loads(suspended.output)["spec"]["suspended"] is True

        async def publish(version: str) -> None:
            publisher = await nats.connect(nats_server.url)
            body = {**event, "version": version}
            await publisher.publish(f"{foreign}.digits.published", json.dumps(body).encode())
            await publisher.flush()
            await publisher.close()

        async def counted(field: str, value: int):
            async def probe():
                shown = await trainyard(url, "trigger", "get", "retrain-on-digits", "-o", "json")
                record = json.loads(shown.output)
                return record if record[field] == value and not record["pending"] else None

            return await eventually(probe, 30, f"{field} {value}")

        await publish("while-suspended")
        assert (await counted("suspended_events", 1))["fired"] == 1
        resumed = await trainyard(url, "trigger", "resume", "retrain-on-digits")
        assert resumed.exit_code == 0 and "active" in resumed.output
        await publish("after-resume")
        record = await counted("fired", 2)
        run = await trainyard(url, "pipeline", "status", record["last_run_id"], "-o", "json")
        assert json.loads(run.output)["spec"]["params"]["version"] == "after-resume"

        # a trigger may start a single job: a one-step pipeline run whose step is named job
        job_trigger = tmp_path / "job-trigger.yaml"
        job_trigger.write_text(
            json.dumps(
                {
                    "name": "one-job",
                    "subject": f"{foreign}.digits.published",
                    "params": {"version": "version"},
                    "job": {
                        "name": "one-job",
                        "command": ["echo", "${{ params.version }}"],
                        "params": {"version": "x"},
                    },
                }
            )
        )
        made_job = await trainyard(url, "trigger", "create", str(job_trigger), "-o", "json")
        assert made_job.exit_code == 0, made_job.output
        await publish("for-the-job")

        async def job_fired():
            shown = json.loads((await trainyard(url, "trigger", "get", "one-job", "-o", "json")).output)
            return shown if shown["fired"] == 1 and not shown["pending"] else None

        fired_job = await eventually(job_fired, 30, "the job trigger fired")
        one = json.loads(
            (await trainyard(url, "pipeline", "status", fired_job["last_run_id"], "-o", "json")).output
        )
        [step] = one["spec"]["steps"]
        assert step["name"] == "job" and step["job"]["command"] == ["echo", "for-the-job"]
        assert step["job"]["params"] == {"version": "for-the-job"}

        # a team token sees none of the admin's triggers and cannot delete them
        made = await trainyard(url, "tokens", "create", "--team", "default", "-o", "json")
        assert made.exit_code == 0, made.output
        team = json.loads(made.output)["token"]
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {team}"}) as http:
            assert (await http.get("/v1/triggers")).json() == {"triggers": []}
            assert (await http.delete("/v1/triggers/retrain-on-digits")).status_code == 404
        async with httpx.AsyncClient(base_url=url) as anonymous:
            assert (await anonymous.get("/v1/triggers")).status_code == 401

        deleted = await trainyard(url, "trigger", "delete", "retrain-on-digits", "-o", "json")
        assert json.loads(deleted.output) == {"name": "retrain-on-digits", "deleted": True}
        gone = await trainyard(url, "trigger", "get", "retrain-on-digits")
        assert gone.exit_code == 4
