"""End to end on the built images: NATS, MLflow and the six services as containers (testcontainers).

- the digits example, submitted over HTTP, runs in the executor's container (local backend: a git
  checkout, scikit-learn, an MLflow run tagged by the client's run-context plugin) and its model
  version is in the MLflow server, read through MLflow's own REST API;
- the scheduler is stopped and started again while a batch of jobs flows (more are submitted while
  it is down): every job ends succeeded, with exactly one ``running`` event per attempt, one
  terminal event, and no job run twice — counted on the job stream itself;
- the three-steps example pipeline runs through the workflow image with training made to fail:
  the failure handler runs, the step that needed training is skipped, and the run succeeds.

Needs ``make images`` and a Docker engine; skipped loudly without them (failed when CI requires
docker through TRAINYARD_TEST_REQUIRE_ENGINES).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict

import nats
import pytest
import yaml
from nats.js.api import DeliverPolicy

from tests.e2e.stack import IMAGES, REPO_MOUNT, ROOT, SERVICES, VERSION, ImageStack, wait_until
from trainyard_client.sdk import TrainyardClient

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.timeout(900)]
TERMINAL = {"succeeded", "failed", "timed_out", "cancelled", "rejected"}


@pytest.fixture
def client(image_stack: ImageStack):
    with TrainyardClient(image_stack.api_url, image_stack.token, timeout=30) as api:
        yield api


def digits_spec() -> dict:
    spec = yaml.safe_load((ROOT / "examples/digits/job.yaml").read_text())
    spec["source"]["repo"] = REPO_MOUNT  # the bare clone mounted into submission and executor
    return spec


async def _job_events(nats_url: str, prefix: str, inbox_prefix: str) -> dict[str, list[dict]]:
    """Every event on the job stream, by job id (an ordered consumer from the first message)."""
    nc = await nats.connect(nats_url, inbox_prefix=inbox_prefix)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(f"{prefix}.job.>", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        events: dict[str, list[dict]] = defaultdict(list)
        while True:
            msg = await sub.next_msg(timeout=10)
            event = json.loads(msg.data)
            events[event["job_id"]].append(event)
            if msg.metadata.num_pending == 0:
                return events
    finally:
        await nc.close()


def job_events(stack: ImageStack) -> dict[str, list[dict]]:
    return asyncio.run(_job_events(stack.nats_url, stack.prefix, stack.nats_inbox_prefix))


def test_each_image_is_labelled_non_root_healthchecked_and_holds_only_its_own_dependencies(images_ready):
    import docker

    client = docker.from_env()
    # a module each service must have, and ones that belong to other services only
    own = {"submission": "fastapi", "scheduler": "faststream", "executor": "docker", "registry": "mlflow"}
    foreign = {
        "submission": ["mlflow", "kubernetes", "docker"],
        "scheduler": ["mlflow", "fastapi", "kubernetes", "docker", "sklearn"],
        "executor": ["sqlalchemy", "alembic", "trainyard_registry", "trainyard_submission"],
        "registry": ["kubernetes", "trainyard_executor", "trainyard_submission"],  # mlflow brings docker
        "telemetry": ["mlflow", "fastapi", "kubernetes", "docker"],
        "workflow": ["mlflow", "fastapi", "kubernetes", "docker", "trainyard_executor"],
    }
    try:
        for svc in SERVICES:
            image = client.images.get(f"trainyard/{svc}:{VERSION}")
            config = image.attrs["Config"]
            assert config["Labels"]["org.opencontainers.image.version"] == VERSION, svc
            assert config["User"] not in ("", "0", "root", "0:0"), f"{svc} runs as root"
            assert "trainyard-healthcheck" in " ".join(config["Healthcheck"]["Test"]), svc
            assert f"TRAINYARD_{svc.upper()}_HOST=0.0.0.0" in config["Env"], svc
            assert client.images.get(f"trainyard/{svc}:latest").id == image.id, f"{svc}:latest is stale"
            probe = [f"trainyard_{svc}", own.get(svc, "trainyard_shared"), *foreign[svc]]
            script = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])"
            found = client.containers.run(
                image.id, ["-c", script, *probe], entrypoint="python", remove=True, user="10001"
            )
            present = set(json.loads(found.decode().strip().replace("'", '"')))
            assert {f"trainyard_{svc}", own.get(svc, "trainyard_shared")} <= present, (svc, present)
            assert not present & set(foreign[svc]), f"{svc} carries {present & set(foreign[svc])}"
        for image in IMAGES:  # the infrastructure images exist too (nats, mlflow)
            assert client.images.get(image)
    finally:
        client.close()


def test_digits_example_runs_in_the_executor_image_and_its_model_version_is_in_mlflow(
    image_stack: ImageStack, client: TrainyardClient
):
    head = image_stack.repo_head
    result = client.submit(digits_spec())
    record = client.wait(result.job_id, timeout=600)
    logs = client.logs(result.job_id)
    assert record.state.value == "succeeded", f"{record.reason}\n{logs}\n{image_stack.logs('executor')}"
    assert record.spec.source is not None and record.spec.source.commit == head
    # the job itself talked to the MLflow server from inside the executor's container
    assert "mlflow: logged run" in logs, logs

    model = client.wait_for_model(result.job_id, timeout=180)
    assert model is not None, f"no model registered\n{image_stack.logs('registry')}"
    assert model.name == "digits-classifier" and model.git_commit == head

    found = image_stack.mlflow_get("model-versions/search", filter="name='digits-classifier'")
    versions = {v["version"]: v for v in found.get("model_versions", [])}
    assert str(model.version) in versions, f"version {model.version} not in MLflow: {sorted(versions)}"
    assert versions[str(model.version)]["run_id"] == model.run_id
    run = image_stack.mlflow_get("runs/get", run_id=model.run_id)["run"]
    tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
    assert tags.get("trainyard.job_id") == result.job_id, tags
    assert tags.get("mlflow.source.git.commit") == head, tags
    metrics = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
    assert metrics.get("accuracy", 0) > 0.9, metrics


def short_job(i: int) -> dict:
    return {
        "name": f"flow-{i}",
        "command": ["python", "-c", f"import time; time.sleep(2); print('job {i} done')"],
        "resources": {"cpu": 0.5, "memory": "64Mi"},  # four at a time on the 2-CPU executor
        "labels": {"test": "scheduler-restart"},
    }


def test_restarting_the_scheduler_mid_run_loses_no_job_and_runs_none_twice(
    image_stack: ImageStack, client: TrainyardClient
):
    before = [client.submit(short_job(i)).job_id for i in range(12)]
    wait_until(
        "a job of the batch running",
        lambda: any(client.get(j).state.value in ("running", "succeeded") for j in before),
        120,
        lambda: image_stack.logs("scheduler"),
    )
    during: list[str] = []
    unfinished_at_stop: list[str] = []

    def while_stopped() -> None:
        unfinished_at_stop.extend(j for j in before if client.get(j).state.value not in TERMINAL)
        # the API keeps accepting work while the scheduler is down
        during.extend(client.submit(short_job(100 + i)).job_id for i in range(6))

    image_stack.restart("scheduler", while_stopped)
    assert unfinished_at_stop, "the batch had finished before the scheduler stopped: nothing was in flight"

    jobs = before + during
    records = {j: client.wait(j, timeout=300) for j in jobs}
    failed = {j: (r.state.value, r.reason) for j, r in records.items() if r.state.value != "succeeded"}
    assert not failed, f"{failed}\n{image_stack.logs('scheduler')}"

    events = job_events(image_stack)
    for job in jobs:
        kinds = [e["type"] for e in events[job]]
        running = Counter(e["attempt"] for e in events[job] if e["type"] == "running")
        assert running and all(n == 1 for n in running.values()), f"{job}: running per attempt {running}"
        assert len(running) == 1, f"{job} ran more than once: attempts {sorted(running)} ({kinds})"
        terminal = [k for k in kinds if k in TERMINAL]
        assert terminal == ["succeeded"], f"{job}: terminal events {terminal} ({kinds})"
        assert records[job].attempt == 1, f"{job}: attempt {records[job].attempt} ({kinds})"


def test_the_example_pipeline_runs_through_the_workflow_image(
    image_stack: ImageStack, client: TrainyardClient
):
    pipeline = yaml.safe_load((ROOT / "examples/pipelines/three-steps.yaml").read_text())
    started = client.run_pipeline(pipeline, params={"fail_training": 1})

    def ended():
        run = client.pipeline(started.run_id)
        return run if run.state.value != "running" else None

    run = wait_until("the pipeline run ended", ended, 300, lambda: image_stack.logs("workflow"))
    steps = {name: step.state.value for name, step in run.steps.items()}
    assert steps == {
        "prepare": "succeeded",
        "train": "failed",
        "evaluate": "skipped",
        "report": "succeeded",
    }, f"{steps}\n{image_stack.logs('workflow')}"
    assert run.state.value == "succeeded", run
    assert len(run.steps["train"].jobs) == 3  # the array of three, each a job of its own
    assert all(client.get(job.job_id).state.value == "failed" for job in run.steps["train"].jobs.values())


def test_no_service_was_refused_by_nats(image_stack: ImageStack, client: TrainyardClient):
    """Last in this module: the services' NATS users allowed everything the tests above did."""
    if not image_stack.nats_auth:
        pytest.skip("deploy/nats/nats.conf is absent: NATS ran without users")
    assert client.health()
    assert image_stack.nats_permission_violations() == []
