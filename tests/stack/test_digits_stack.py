"""The embedded stack as real processes (nats-server + the five services), end to end.

The digits example runs for real (scikit-learn on the bundled data), logs to the MLflow store in
the data dir, and its model version is registered with the job's git commit. A job submitted by a
bare NATS publish runs like one from the API, and a malformed event is dead-lettered while every
service keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import nats
import pytest
import yaml

from trainyard_client.bus import submit_over_nats
from trainyard_client.stack import EmbeddedStack

pytestmark = pytest.mark.stack
ROOT = Path(__file__).resolve().parents[2]


def digits_spec() -> dict:
    spec = yaml.safe_load((ROOT / "examples/digits/job.yaml").read_text())
    spec["source"]["repo"] = str(ROOT)  # what the CLI does with the relative path
    return spec


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    data = tmp_path_factory.mktemp("stack")
    with EmbeddedStack(data, api_port=None, nats_port=None, ready_timeout=120) as running:
        yield running


def test_digits_example_runs_and_registers_its_model(stack):
    client = stack.client()
    result = client.submit(digits_spec())
    record = client.wait(result.job_id, timeout=300)
    assert record.state.value == "succeeded", client.logs(result.job_id)
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert record.spec.source and record.spec.source.commit == head
    model = client.wait_for_model(result.job_id, timeout=120)
    assert model is not None, "no model version was registered"
    assert model.name == "digits-classifier" and model.metrics["accuracy"] > 0.9
    assert model.git_commit == head
    versions = client.models("digits-classifier")
    assert any(v.job_id == result.job_id for v in versions)
    assert "accuracy" in client.logs(result.job_id)


def test_a_bare_nats_submission_runs_like_one_from_the_api(stack):
    spec = {"name": "from-the-bus", "command": ["python", "-c", "print('bus job ran')"]}
    reply = asyncio.run(
        submit_over_nats(
            stack.nats_url, json.dumps(spec), prefix=stack.prefix, **stack.nats_connect_options()
        )
    )
    assert reply["accepted"], reply
    client = stack.client()
    record = client.wait(reply["job_id"], timeout=120)
    assert record.state.value == "succeeded" and record.submitted_by == "bus"
    assert "bus job ran" in client.logs(reply["job_id"])


def test_a_malformed_event_is_dead_lettered_and_services_keep_serving(stack):
    # who consumes what: registry, telemetry and workflow (a step's job ending) read succeeded
    # events, the scheduler and telemetry read cancel requests; each consumer dead-letters the
    # poison on its own
    expected = {
        "poison0001.succeeded": {"registry", "telemetry", "workflow"},
        "poison0002.cancel_requested": {"scheduler", "telemetry"},
    }

    async def poison_and_read() -> dict[str, set[str]]:
        # the operator: no service user may publish another's events
        nc = await nats.connect(stack.nats_url, **stack.nats_connect_options("admin"))
        js = nc.jetstream()
        for subject in expected:
            await js.publish(f"{stack.prefix}.job.{subject}", b"\x00 not an event")
        sub = await js.subscribe(f"{stack.prefix}.dlq.>", ordered_consumer=True)
        seen: dict[str, set[str]] = {subject: set() for subject in expected}
        try:
            while seen != expected:
                try:
                    msg = await sub.next_msg(timeout=30)
                except nats.errors.TimeoutError:
                    return seen  # compared below, so a missing or an extra service is named
                original = msg.headers.get("Trainyard-Original-Subject", "")
                for subject in expected:
                    if original.endswith(subject):
                        seen[subject].add(msg.headers["Trainyard-Service"])
        finally:
            await nc.drain()
        return seen

    assert asyncio.run(poison_and_read()) == expected
    client = stack.client()
    letters = [x for x in client.dead_letters() if "poison000" in x["subject"]]
    assert sorted(x["service"] for x in letters) == [
        "registry",
        "scheduler",
        "telemetry",
        "telemetry",
        "workflow",
    ]
    assert all(x["reason"].startswith("invalid message") for x in letters)
    job = client.submit({"name": "after-poison", "command": ["true"]})
    assert client.wait(job.job_id, timeout=120).state.value == "succeeded"
    assert all(stack.healthy().values())


def test_why_and_dry_run_from_the_cli(stack):
    from typer.testing import CliRunner

    from trainyard_client.cli import app

    runner = CliRunner()
    base = ["--url", stack.api_url, "--token", stack.token()]
    spec = stack.data_dir / "probe.yaml"
    # a spec no executor could hold is refused by the dry run as by a submit (a 422 naming the field)
    spec.write_text('name: probe\ncommand: ["true"]\nresources: {cpu: 4000}\n')
    too_large = runner.invoke(app, [*base, "submit", "--dry-run", str(spec)])
    assert too_large.exit_code != 0, too_large.output
    assert "resources.cpu" in too_large.output and "more than any executor offers" in too_large.output
    spec.write_text('name: probe\ncommand: ["true"]\nresources: {cpu: 0.1}\n')
    try:
        dry = runner.invoke(app, [*base, "submit", "--dry-run", str(spec)])
    finally:
        spec.unlink()
    assert dry.exit_code == 0, dry.output
    assert "(nothing was queued)" in dry.output and "would " in dry.output
    client = stack.client()
    assert not [j for j in client.list() if j.name == "probe"]  # nothing was queued

    job = client.submit({"name": "explained", "command": ["true"]})
    client.wait(job.job_id, timeout=120)
    why = runner.invoke(app, [*base, "why", job.job_id])
    assert why.exit_code == 0, why.output
    assert "has finished: succeeded" in why.output and "not pending" not in why.output


def test_status_says_why_a_job_waits_and_wait_follows_many_jobs(stack):
    from typer.testing import CliRunner

    from trainyard_client.cli import app
    from trainyard_contracts import QueueConfig, Quota

    runner = CliRunner()
    base = ["--url", stack.api_url, "--token", stack.token()]
    client = stack.client()
    client.set_queue(QueueConfig(name="capped", quota=Quota(cpu=0.5)), if_revision=0)
    held = client.submit(
        {
            "name": "held",
            "command": ["true"],
            "queue": "capped",
            "resources": {"cpu": 1},
            "labels": {"p": "why"},
        }
    )
    deadline = time.monotonic() + 60
    while (answer := client.why(held.job_id)).reason is None or not answer.pending:
        assert time.monotonic() < deadline, answer
        time.sleep(0.2)
    assert answer.reason.kind == "quota", answer
    table = runner.invoke(app, ["status", "-l", "p=why", *base])  # piped: plain columns
    assert table.exit_code == 0, table.output
    header, row = table.stdout.splitlines()
    assert "REASON" in header.split() and held.job_id in row and "quota: " in row
    client.cancel(held.job_id)

    quick = [
        client.submit({"name": f"quick{i}", "command": ["true"], "labels": {"p": "wait"}}) for i in (1, 2)
    ]
    waited = runner.invoke(app, [*base, "wait", "-l", "p=wait", "--timeout", "120"])
    assert waited.exit_code == 0, waited.output
    assert all(f"{job.job_id} succeeded" in waited.output for job in quick)
    failing = client.submit({"name": "fails", "command": ["false"]})
    both = runner.invoke(app, [*base, "wait", quick[0].job_id, failing.job_id, "-q", "--timeout", "120"])
    assert both.exit_code == 1 and both.output == ""


def test_service_log_files_are_json_lines_and_idle_polling_is_not_logged(stack):
    """One format per file (JSON, with faststream's and uvicorn's records too); the banner line
    `trainyard up` writes before each start is the one exception."""
    records, other = 0, []
    # one file per process: the co-hosted registry, telemetry and workflow service write one,
    # its records' service field naming the three (each record's logger says whose)
    for service in stack.processes:
        for line in (stack.log_dir / f"{service}.log").read_text().splitlines():
            if not line.strip() or line.startswith("--- trainyard up:"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                other.append(f"{service}: {line}")
                continue
            # the process's name, or (a record that names its own service, as the dead-letter
            # line does) one of the services it hosts
            assert record["service"] in {service, *stack.processes[service].services}, line
            assert record.get("detail") != "No Messages", line
            records += 1
    assert records > 0 and other == []
