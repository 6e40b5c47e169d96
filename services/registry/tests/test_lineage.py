"""Lineage: a job that records its input datasets (``trainyard.dataset`` and ``mlflow.log_input``)
becomes a version whose lineage shows them with their digests, its executor and backend, the
pipeline run it was a step of, and its commit; ``compare`` shows the datasets too.

The job is a real process with the executor's in-job module on its ``PYTHONPATH`` (as every job
has it) and its own MLflow run; the registry service registers it from a real ``succeeded``
event on a real nats-server, with the job's record in the jobs bucket and its executor's heartbeat
in the executors bucket, against a real MLflow SQLite store.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.registry.tests.test_models_cli import trainyard
from trainyard_contracts import Capacity, ExecutorHeartbeat, JobRecord, JobState, JobSucceeded, Subjects
from trainyard_contracts.records import AttemptInfo, AttemptRuntime
from trainyard_contracts.spec import parse_spec
from trainyard_shared.testing.helpers import eventually

pytestmark = [pytest.mark.service, pytest.mark.registry]
RUNTIME = AttemptRuntime(image_digest="sha256:" + "1" * 64, runtime_lock="sha256:" + "2" * 64)
REPORTER = Path(__file__).resolve().parents[2] / "executor" / "src" / "trainyard_executor" / "reporter"

JOB = textwrap.dedent(
    """
    import json, os, pathlib, sys

    import mlflow
    import trainyard
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    digest = trainyard.dataset("digits-train", sys.argv[1])
    trainyard.dataset("labels", "s3://bucket/labels.parquet", digest="md5:0123abcd", context="training")
    with mlflow.start_run():
        source = HTTPDatasetSource("https://example.com/holdout.csv")
        holdout = MetaDataset(source, name="holdout", digest="h0ld0ut1")
        mlflow.log_input(holdout, context="validation")
        mlflow.log_metric("accuracy", 0.93)
    out = pathlib.Path(os.environ["TRAINYARD_OUTPUT_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.pkl").write_bytes(b"weights")
    print(json.dumps({"digest": digest}))
    """
)


def run_job(tmp_path: Path, job_id: str, tracking_uri: str, data: Path) -> tuple[Path, str]:
    """The job as a process, as an executor starts it: its outputs folder and the digest it got."""
    script = tmp_path / "train.py"
    script.write_text(JOB)
    outputs = tmp_path / "work" / "outputs"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINYARD_", "MLFLOW_"))}
    env.update(
        PYTHONPATH=str(REPORTER),
        TRAINYARD_JOB_ID=job_id,
        TRAINYARD_ATTEMPT="1",
        TRAINYARD_QUEUE="default",
        TRAINYARD_OUTPUT_DIR=str(outputs),
        MLFLOW_TRACKING_URI=tracking_uri,
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    done = subprocess.run(
        [sys.executable, str(script), str(data)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return outputs, json.loads(done.stdout.strip().splitlines()[-1])["digest"]


async def succeed(s, job_id: str, outputs: Path, labels: dict[str, str]) -> None:
    """The job's record and its executor's heartbeat in their buckets, then its succeeded event."""
    subjects = Subjects(s.prefix)
    js = s.nc.jetstream()
    spec = parse_spec(
        json.dumps(
            {
                "name": "train",
                "command": ["python", "train.py"],
                "outputs": {"model": "lineage-digits"},
                "source": {"repo": "https://example.com/ml.git", "commit": "a" * 40},
                "labels": labels,
            }
        )
    )
    now = datetime.now(UTC)
    record = JobRecord(
        job_id=job_id,
        spec=spec,
        state=JobState.SUCCEEDED,
        executor_id="exec-lineage",
        submitted_at=now,
        updated_at=now,
        outputs_uri=outputs.as_uri(),
        # what its executor reported it ran in (an end report puts it there: test_attempt_runtime)
        attempts=[AttemptInfo(number=1, executor_id="exec-lineage", runtime=RUNTIME)],
    )
    await (await js.key_value(subjects.buckets.jobs)).put(job_id, record.model_dump_json().encode())
    heartbeat = ExecutorHeartbeat(
        executor_id="exec-lineage", backend="local", capacity=Capacity(cpu=2, memory=1024)
    )
    executors = await js.key_value(subjects.buckets.executors)
    await executors.put("exec-lineage", heartbeat.model_dump_json().encode())
    event = JobSucceeded(
        job_id=job_id, executor_id="exec-lineage", outputs_uri=outputs.as_uri(), declares_model=True
    )
    await js.publish(event.subject(subjects), event.model_dump_json().encode())


async def registered_version(s, job_id: str) -> int:
    async def version() -> int | None:
        rows = (await s.http.get("/v1/models", params={"name": "lineage-digits"})).json().get("models", [])
        return next((int(r["version"]) for r in rows if r["job_id"] == job_id), None)

    return await eventually(version, timeout=120, what=f"the model version of {job_id}")


async def test_a_job_that_records_datasets_has_them_with_digests_in_its_versions_lineage(
    stack, tmp_path
) -> None:
    data = tmp_path / "digits.csv"
    data.write_text("pixel0,pixel1,label\n0,16,3\n")
    expected = "sha256:" + hashlib.sha256(data.read_bytes()).hexdigest()
    job_id = "job" + uuid.uuid4().hex[:12]
    async with stack as s, s.served() as url:
        outputs, digest = await asyncio.to_thread(run_job, tmp_path, job_id, s.store.tracking_uri, data)
        assert digest == expected  # what the job was told is what it recorded
        labels = {"trainyard.dev/pipeline-run": "run42", "trainyard.dev/pipeline-step": "train"}
        await succeed(s, job_id, outputs, labels)
        version = await registered_version(s, job_id)

        answer = await s.http.get(f"/v1/models/lineage-digits/versions/{version}/lineage")
        assert answer.status_code == 200, answer.text
        lineage = answer.json()
        assert (lineage["job_id"], lineage["attempt"]) == (job_id, 1)
        assert (lineage["executor_id"], lineage["backend"]) == ("exec-lineage", "local")
        assert (lineage["pipeline_run"], lineage["pipeline_step"]) == ("run42", "train")
        assert lineage["git_commit"] == "a" * 40 and lineage["model_id"]
        assert (lineage["image_digest"], lineage["runtime_lock"]) == (
            RUNTIME.image_digest,
            RUNTIME.runtime_lock,
        )
        datasets = {d["name"]: d for d in lineage["datasets"]}
        assert set(datasets) == {"digits-train", "labels", "holdout"}
        assert datasets["digits-train"]["digest"] == expected
        assert datasets["digits-train"]["source"] == str(data)
        assert (datasets["labels"]["digest"], datasets["labels"]["source"]) == (
            "md5:0123abcd",
            "s3://bucket/labels.parquet",
        )
        assert (datasets["holdout"]["digest"], datasets["holdout"]["context"]) == ("h0ld0ut1", "validation")

        # the datasets are the version's run's inputs in MLflow itself (its UI shows them there)
        run = await asyncio.to_thread(s.store.client.get_run, lineage["run_id"])
        assert {d.dataset.name for d in run.inputs.dataset_inputs} == set(datasets)

        # registering again (a redelivered event) adds no second copy of any dataset
        await succeed(s, job_id, outputs, labels)
        again = (await s.http.get(f"/v1/models/lineage-digits/versions/{version}/lineage")).json()
        assert sorted(d["name"] for d in again["datasets"]) == sorted(datasets)

        both = {"a": version, "b": version}
        compared = await s.http.get("/v1/models/lineage-digits/compare", params=both)
        assert compared.json()["versions"][0]["datasets"] == lineage["datasets"]

        # the CLI: a table (the datasets with their digests), -o json, and compare's datasets row
        shown = await trainyard(url, "models", "lineage", "lineage-digits", str(version))
        assert shown.exit_code == 0, shown.output
        assert "exec-lineage (local)" in shown.output and "run42 step train" in shown.output
        assert expected in shown.output and "md5:0123abcd" in shown.output
        as_json = await trainyard(url, "models", "lineage", "lineage-digits", str(version), "-o", "json")
        assert json.loads(as_json.stdout) == lineage
        table = await trainyard(url, "models", "compare", "lineage-digits", str(version), str(version))
        row = next(line for line in table.stdout.splitlines() if line.split()[1:2] == ["datasets"])
        assert "holdout@h0ld0ut1" in " ".join(table.stdout.split()), row
        assert RUNTIME.runtime_lock in table.stdout and RUNTIME.image_digest in table.stdout


async def test_the_lineage_of_a_missing_version_is_404(stack) -> None:
    async with stack as s:
        missing = await s.http.get("/v1/models/nothing-here/versions/3/lineage")
        assert missing.status_code == 404
