"""The step cache on a real nats-server with the real submission, scheduler, local executor (real
processes) and workflow service: a ``cache: true`` step whose rendered spec and inputs match an
earlier success of the same submitter reuses its job (none submitted); a changed spec, a changed
input, another team and ``no_cache`` run it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.service, pytest.mark.workflow, pytest.mark.local]

WRITE_SPLIT = (
    "import json, os, sys; "
    "out = os.path.join(os.environ['TRAINYARD_OUTPUT_DIR'], 'outputs.json'); "
    "json.dump({'split': sys.argv[1]}, open(out, 'w'))"
)
PIPELINE = {
    "name": "cached",
    "params": {"split": "v1", "lr": "0.1"},
    "steps": [
        # not cached: it runs every time; what it hands on is what train's key holds
        {
            "name": "prepare",
            "job": {"name": "prepare", "command": ["python3", "-c", WRITE_SPLIT, "${{ params.split }}"]},
        },
        {
            "name": "train",
            "depends": ["prepare"],  # its outputs are an input, though train does not name them
            "cache": True,
            "job": {"name": "train", "command": ["echo", "lr=${{ params.lr }}"]},
        },
    ],
}


async def _run(client, by: str, **extra):
    started = await client.ask("run", pipeline=PIPELINE, by=by, **extra)
    assert started.ok, started.errors
    return await client.ended(started.run.run_id)


async def test_a_cached_step_reuses_its_earlier_job_and_what_differs_misses(prefix, bus, workflow_stack):
    async with workflow_stack() as client:
        first = await _run(client, "team-a")
        assert first.state.value == "succeeded"
        train = first.steps["train"]
        assert train.cache is not None and train.cache.state == "miss" and train.cache.key
        ran = train.jobs[0].job_id

        again = await _run(client, "team-a")  # prepare runs again and hands on the same split
        assert again.state.value == "succeeded"
        assert again.steps["prepare"].jobs[0].job_id != first.steps["prepare"].jobs[0].job_id
        hit = again.steps["train"]
        assert hit.state.value == "succeeded"
        assert hit.cache is not None and hit.cache.state == "hit" and hit.cache.from_run == first.run_id
        assert hit.jobs[0].job_id == ran  # the earlier job: none submitted
        pipeline_events = bus.subjects.streams.pipelines
        submitted = await bus.messages(f"{prefix}.pipeline.{again.run_id}.step_submitted", pipeline_events)
        assert [json.loads(m.data)["step"] for m in submitted] == ["prepare"]
        ended = await bus.messages(f"{prefix}.pipeline.{again.run_id}.step_ended", pipeline_events)
        train_end = [json.loads(m.data) for m in ended if json.loads(m.data)["step"] == "train"]
        assert train_end[0]["state"] == "succeeded" and train_end[0]["cached_from"] == first.run_id

        # what differs misses: another input (prepare's split), the spec (lr), another team; and
        # no_cache does not look (it runs, and its success is remembered)
        other_input, other_spec, other_team, unlooked = await asyncio.gather(
            client.ask("run", pipeline=PIPELINE, by="team-a", params={"split": "v2"}),
            client.ask("run", pipeline=PIPELINE, by="team-a", params={"lr": "0.2"}),
            client.ask("run", pipeline=PIPELINE, by="team-b"),
            client.ask("run", pipeline=PIPELINE, by="team-a", no_cache=True),
        )
        runs = [await client.ended(r.run.run_id) for r in (other_input, other_spec, other_team, unlooked)]
        for run in runs:
            step = run.steps["train"]
            assert run.state.value == "succeeded" and step.cache is not None
            assert step.cache.state == "miss", run.run_id
            assert step.jobs[0].job_id != ran
        assert runs[3].steps["train"].cache.key == train.cache.key  # the same key, not looked up
        assert len({run.steps["train"].cache.key for run in runs[:3]} | {train.cache.key}) == 4

        latest = await _run(client, "team-a")  # the no_cache run's success replaced the entry
        assert latest.steps["train"].cache.state == "hit"
        assert latest.steps["train"].cache.from_run == runs[3].run_id
        record = await bus.record(latest.steps["train"].jobs[0].job_id)
        assert record is not None and record.spec.labels["trainyard.dev/pipeline-run"] == runs[3].run_id


async def test_an_entry_whose_job_record_is_gone_misses_and_is_removed(prefix, bus, workflow_stack):
    async with workflow_stack() as client:
        first = await _run(client, "team-a")
        key = first.steps["train"].cache.key
        jobs = await bus.js.key_value(bus.subjects.buckets.jobs)
        await jobs.purge(first.steps["train"].jobs[0].job_id)  # the record went (a purge, retention)

        again = await _run(client, "team-a")
        assert again.steps["train"].cache.state == "miss"
        assert again.steps["train"].jobs[0].job_id != first.steps["train"].jobs[0].job_id
        cache = await bus.js.key_value(bus.subjects.buckets.step_cache)
        entry = json.loads((await cache.get(key)).value)
        assert entry["run_id"] == again.run_id  # the stale entry removed, the new success written


async def test_the_cli_shows_a_hit_and_no_cache_runs_the_step(workflow_stack):
    from typer.testing import CliRunner

    from trainyard_client.cli import app as cli_app

    async def trainyard(url: str, token: str, *args: str):
        return await asyncio.to_thread(CliRunner().invoke, cli_app, ["--url", url, "--token", token, *args])

    file = Path(__file__).parents[3] / "examples" / "pipelines" / "cached.yaml"  # the docs' example
    async with workflow_stack() as client, client.served() as url:
        first = await trainyard(url, client.token, "pipeline", "run", str(file), "--wait", "-o", "json")
        assert first.exit_code == 0, first.output
        first_run = json.loads(first.stdout)

        hit = await trainyard(url, client.token, "pipeline", "run", str(file), "--wait")
        assert hit.exit_code == 0, hit.output
        assert f"cached from {first_run['run_id']}" in hit.output  # the live lines and the tree

        forced = await trainyard(
            url, client.token, "pipeline", "run", str(file), "--no-cache", "--wait", "-o", "json"
        )
        assert forced.exit_code == 0, forced.output
        run = json.loads(forced.stdout)
        assert run["no_cache"] is True and run["steps"]["train"]["cache"]["state"] == "miss"
        assert (
            run["steps"]["train"]["jobs"]["0"]["job_id"] != first_run["steps"]["train"]["jobs"]["0"]["job_id"]
        )


async def test_a_hit_needs_the_earlier_outputs_folder_still_stored(bus, workflow_stack):
    """An entry whose job packed an outputs folder is used only while that blob is in the step
    outputs bucket (its dependents' $TRAINYARD_INPUTS): a blob is kept from its first put."""
    from trainyard_shared.blobs.store import open_store, put_blob

    async with workflow_stack() as client:
        first = await _run(client, "team-a")
        key = first.steps["train"].cache.key
        cache = await bus.js.key_value(bus.subjects.buckets.step_cache)
        entry = json.loads((await cache.get(key)).value)

        async def with_digest(digest: str) -> None:
            entry["jobs"]["0"]["outputs_digest"] = digest
            await cache.put(key, json.dumps(entry).encode())

        store = await open_store(bus.js, bus.subjects.step_outputs_bucket)
        digest, _ = await put_blob(store, b"a packed outputs folder")
        await with_digest("sha256:" + "0" * 64)  # a folder no longer stored (expired)
        gone = await _run(client, "team-a")
        assert gone.steps["train"].cache.state == "miss"
        assert gone.steps["train"].jobs[0].job_id != first.steps["train"].jobs[0].job_id

        entry = json.loads((await cache.get(key)).value)  # written before the run's state was
        assert entry["run_id"] == gone.run_id  # the miss's success, written again
        await with_digest(digest)
        kept = await _run(client, "team-a")
        assert kept.steps["train"].cache.state == "hit"
        assert kept.steps["train"].jobs[0].outputs_digest == digest  # handed on to its dependents


async def test_a_cached_steps_outputs_folder_reaches_the_next_runs_dependents(bus, workflow_stack):
    """A hit hands its dependents the earlier job's outputs folder ($TRAINYARD_INPUTS), as the
    step that ran would have: the folder it packed, not a new one."""
    write = 'mkdir -p "$TRAINYARD_OUTPUT_DIR/data" && '
    write += 'echo "made by $TRAINYARD_JOB_ID" > "$TRAINYARD_OUTPUT_DIR/data/made.txt"'
    read = 'echo "read: $(cat "$TRAINYARD_INPUTS/prepare/data/made.txt")"'
    pipeline = {
        "name": "cached-folder",
        "steps": [
            {"name": "prepare", "cache": True, "job": {"name": "prepare", "command": [write], "shell": True}},
            {
                "name": "read",
                "depends": ["prepare"],
                "job": {"name": "read", "command": [read], "shell": True},
            },
        ],
    }
    async with workflow_stack() as client:
        runs = []
        for _ in range(2):
            started = await client.ask("run", pipeline=pipeline, by="team-a")
            runs.append(await client.ended(started.run.run_id, timeout=120))
        first, second = runs
        assert [r.state.value for r in runs] == ["succeeded", "succeeded"]
        made = first.steps["prepare"].jobs[0]
        assert made.outputs_digest is not None
        hit = second.steps["prepare"]
        assert hit.cache.state == "hit" and hit.jobs[0].job_id == made.job_id
        assert hit.jobs[0].outputs_digest == made.outputs_digest
        reader = await bus.record(second.steps["read"].jobs[0].job_id)
        assert [i.digest for i in reader.spec.inputs] == [made.outputs_digest]
        assert any(f"read: made by {made.job_id}" in line for line in await bus.log_text(reader.job_id))
