"""$TRAINYARD_INPUTS on a real nats-server with the real submission, scheduler, executor and workflow
service: a step's outputs folder is packed once into the step outputs bucket and unpacked for each
dependent under ``$TRAINYARD_INPUTS/<step>/`` (an array step's under ``<step>/<index>/``); a folder
over the cap fails its step naming the biggest file; a hostile archive is refused before the job runs.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from trainyard_contracts import JobSpec
from trainyard_contracts.spec import StepInput
from trainyard_executor.settings import ExecutorSettings
from trainyard_executor.testengines import ENGINE_URLS, IMAGE
from trainyard_shared.blobs import digest_of, get_blob, open_store, put_blob

pytestmark = [pytest.mark.service, pytest.mark.workflow]
pytest_plugins = ["trainyard_executor.testengines"]  # the engine fixture (docker, podman)

PREPARE = (
    'mkdir -p "$TRAINYARD_OUTPUT_DIR/data" && echo rows=1797 > "$TRAINYARD_OUTPUT_DIR/data/split.txt" '
    '&& echo left-out > "$TRAINYARD_OUTPUT_DIR/scratch.bin" '
    '&& echo scratch.bin > "$TRAINYARD_OUTPUT_DIR/.trainyardignore"'
)
READ = 'echo "read $(cat "$TRAINYARD_INPUTS/prepare/data/split.txt") from $(ls "$TRAINYARD_INPUTS")"; '
READ += 'test ! -e "$TRAINYARD_INPUTS/prepare/scratch.bin"'
TRAIN = 'mkdir -p "$TRAINYARD_OUTPUT_DIR" && '
TRAIN += 'echo "model $TRAINYARD_ARRAY_INDEX" > "$TRAINYARD_OUTPUT_DIR/model.txt"'
EVALUATE = 'echo "best of: $(cat "$TRAINYARD_INPUTS"/train/*/model.txt | tr "\\n" ",")"'


def shell_step(name: str, command: str, **rest: object) -> dict[str, object]:
    return {"name": name, "job": {"name": name, "command": [command], "shell": True}, **rest}


PIPELINE = {
    "name": "inputs",
    "steps": [
        shell_step("prepare", PREPARE),
        shell_step("other", "true"),
        *(shell_step(f"read-{i}", READ, depends=["prepare"]) for i in range(3)),
        shell_step("train", TRAIN, depends=["prepare"], array="0-1"),
        shell_step("evaluate", EVALUATE, depends=["train"]),
    ],
}


async def stored_digests(bus) -> set[str]:
    store = await open_store(bus.js, bus.subjects.step_outputs_bucket)
    try:
        return {info.name for info in await store.list()}
    except Exception:  # nats-py: no objects at all
        return set()


@pytest.mark.local
async def test_a_steps_outputs_folder_reaches_its_dependents_stored_once(bus, workflow_stack, tmp_path):
    async with workflow_stack() as client:
        started = await client.ask("run", pipeline=PIPELINE, by="tester")
        assert started.ok and started.run is not None
        run = await client.ended(started.run.run_id, timeout=120)
        assert run.state.value == "succeeded", {n: (s.state, s.reason) for n, s in run.steps.items()}

        prepare = await bus.record(run.steps["prepare"].jobs[0].job_id)
        assert prepare.spec.pass_outputs and prepare.outputs_digest is not None
        assert run.steps["prepare"].jobs[0].outputs_digest == prepare.outputs_digest
        other = await bus.record(run.steps["other"].jobs[0].job_id)
        assert not other.spec.pass_outputs and other.outputs_digest is None  # nothing depends on it

        for i in range(3):  # a fan-out: each dependent reads the one stored folder
            job_id = run.steps[f"read-{i}"].jobs[0].job_id
            record = await bus.record(job_id)
            assert record.spec.inputs == [StepInput(path="prepare", digest=prepare.outputs_digest)]
            assert any("read rows=1797 from prepare" in line for line in await bus.log_text(job_id))

        evaluate_id = run.steps["evaluate"].jobs[0].job_id
        evaluate = await bus.record(evaluate_id)
        assert [i.path for i in evaluate.spec.inputs] == ["train/0", "train/1"]  # its own dependency only
        assert any("best of: model 0,model 1," in line for line in await bus.log_text(evaluate_id))

        # stored once each: prepare's folder (its three readers and both trainers fetched it), and
        # the two trainers' (different content, two digests)
        trained = {run.steps["train"].jobs[i].outputs_digest for i in (0, 1)}
        assert await stored_digests(bus) == {prepare.outputs_digest, *trained}
        # what is stored is the folder as packed: .trainyardignore honoured
        store = await open_store(bus.js, bus.subjects.step_outputs_bucket)
        archive = await get_blob(store, prepare.outputs_digest, max_bytes=1 << 20)
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(archive))) as tar:
            assert sorted(tar.getnames()) == [".trainyardignore", "data", "data/split.txt"]

        # an attempt's inputs folder goes once its end is recorded
        work = tmp_path / "data" / "executor" / "exec-wf" / "work"
        assert not list(work.glob("*/attempt-*.inputs"))


@pytest.mark.local
async def test_an_outputs_folder_over_the_cap_fails_its_step_naming_the_biggest_file(bus, workflow_stack):
    settings = ExecutorSettings(
        id="exec-wf", cpu=4, memory=4096, heartbeat_seconds=0.5, max_step_outputs_bytes=64 * 1024
    )
    big = 'mkdir -p "$TRAINYARD_OUTPUT_DIR" && head -c 200000 /dev/zero > "$TRAINYARD_OUTPUT_DIR/weights.bin"'
    pipeline = {
        "name": "too-big",
        "steps": [shell_step("prepare", big), shell_step("use", "true", depends=["prepare"])],
    }
    async with workflow_stack(executor_settings=settings) as client:
        started = await client.ask("run", pipeline=pipeline, by="tester")
        assert started.ok and started.run is not None
        run = await client.ended(started.run.run_id, timeout=120)
        record = await bus.record(run.steps["prepare"].jobs[0].job_id)
        assert record.state.value == "failed" and record.exit_code == 0  # the job ran well
        assert "could not be passed to later steps" in (record.reason or "")
        assert "weights.bin" in (record.reason or "")
        assert run.steps["use"].state.value == "skipped"


def hostile_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        entry = tarfile.TarInfo("../escaped.txt")
        entry.size = 5
        tar.addfile(entry, io.BytesIO(b"owned"))
    return gzip.compress(buffer.getvalue(), mtime=0)


@pytest.mark.local
async def test_a_hostile_archive_is_refused_before_the_job_runs(bus, workflow_stack, tmp_path):
    """Only the workflow service names inputs, and only digests its steps reported; an archive in
    the bucket is still unpacked as hostile input (whoever put it there): nothing lands outside
    the attempt's inputs folder, and the job never starts."""
    data = hostile_archive()
    async with workflow_stack() as _:
        store = await open_store(bus.js, bus.subjects.step_outputs_bucket)
        digest, _stored = await put_blob(store, data)
        assert digest == digest_of(data)
        marker = tmp_path / "ran"
        spec = JobSpec(
            name="victim",
            command=["touch", str(marker)],
            inputs=[StepInput(path="prepare", digest=digest)],
        )
        job_id = await bus.submit(spec)
        record = await bus.wait_state(job_id, "failed", timeout=60)
        assert "could not run" in (record.reason or "")
        assert "the outputs of step prepare are refused" in (record.reason or "")
        assert "'..'" in (record.reason or "")
        assert not marker.exists()
        assert not list(Path(tmp_path).rglob("escaped.txt"))  # nowhere under the stack's data
        work = tmp_path / "data" / "executor" / "exec-wf" / "work" / job_id
        assert not list(work.glob("attempt-*.inputs"))  # the refused folder is removed


async def test_a_container_step_reads_its_dependencys_folder_mounted_read_only(bus, workflow_stack, engine):
    """Docker and Podman: the inputs folder is unpacked on the host and bound read-only at
    /trainyard/inputs (TRAINYARD_INPUTS); the job cannot change what its dependency passed on."""
    settings = ExecutorSettings(
        id="exec-wf",
        backend=engine,
        cpu=1,
        memory=2048,
        heartbeat_seconds=0.5,
        docker_host=ENGINE_URLS["docker"],
        podman_socket=ENGINE_URLS["podman"],
    )
    write = 'mkdir -p "$TRAINYARD_OUTPUT_DIR/data" && echo rows=1797 > "$TRAINYARD_OUTPUT_DIR/data/split.txt"'
    read = (
        'echo "at $TRAINYARD_INPUTS read $(cat "$TRAINYARD_INPUTS/prepare/data/split.txt")"; '
        'if echo x > "$TRAINYARD_INPUTS/prepare/data/split.txt"; then echo WRITABLE; else echo read-only; fi'
        '; echo "mounted $(grep " /trainyard/inputs " /proc/mounts | cut -d" " -f4 | cut -d, -f1)"'
    )

    def step(name: str, command: str, **rest: object) -> dict[str, object]:
        job = {"name": name, "image": IMAGE, "command": ["sh", "-c", command]}
        return {"name": name, "job": job, **rest}

    pipeline = {
        "name": "inputs-container",
        "steps": [step("prepare", write), step("use", read, depends=["prepare"])],
    }
    async with workflow_stack(executor_settings=settings) as client:
        started = await client.ask("run", pipeline=pipeline, by="tester")
        assert started.ok and started.run is not None
        run = await client.ended(started.run.run_id, timeout=180)
        use_id = run.steps["use"].jobs[0].job_id
        logs = await bus.log_text(use_id) if use_id else []
        assert run.state.value == "succeeded", ({n: s.reason for n, s in run.steps.items()}, logs)
        assert any("at /trainyard/inputs read rows=1797" in line for line in logs), logs
        assert "read-only" in [line.strip() for line in logs], logs  # not the argv line: the output
        assert "WRITABLE" not in [line.strip() for line in logs], logs
        assert "mounted ro" in [line.strip() for line in logs], logs  # the bind itself is read-only
