"""The kubeflow backend: an attempt as a Kubeflow Trainer v2 TrainJob.

No cluster and no Kubeflow Trainer can run on this machine. The stand-ins (trainyard_executor.
kubeemulator): kmock's in-memory Kubernetes API, which the official client talks to for real, and
``TrainerStandIn``, a small controller of ours that turns a TrainJob into pods and conditions as the
Trainer, JobSet and the kubelet would. So these tests show the client side (what the backend
creates, patches, watches, reads and deletes, and what it concludes from conditions and pods)
against a stand-in, not a real Trainer's behaviour. The TrainJob manifest is checked against the
Trainer API's own models (``kubeflow-trainer-api`` 2.3, generated from the Trainer's OpenAPI, strict
types): it must survive a round trip through them unchanged, so a misspelt or mistyped field fails.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubeflow_trainer_api.models.trainer_v1alpha1_train_job import TrainerV1alpha1TrainJob
from kubernetes import client as k8s

from trainyard_executor.app import make_backend
from trainyard_executor.backends.base import AttemptLaunch, AttemptOutcome, Gang, Resources
from trainyard_executor.backends.kube_attempt import KubeAttempt
from trainyard_executor.backends.kube_fetch import FETCH_LABEL, FetchOptions
from trainyard_executor.backends.kube_manifests import (
    ANNOT_TIMEOUT,
    LABEL_ATTEMPT,
    LABEL_EXECUTOR,
    LABEL_JOB,
    GangSplitError,
    KubeOptions,
    companion_metadata,
    job_name,
)
from trainyard_executor.backends.kube_trainjob import TrainerOptions, trainjob_manifest
from trainyard_executor.backends.kubeflow import KubeflowBackend, dropped_patches
from trainyard_executor.fetch import PLAN_VARIABLE
from trainyard_executor.fetch import parse as fetch_parse
from trainyard_executor.jobenv import HOST_ONLY_ENV
from trainyard_executor.kubeemulator import (
    SAMPLE_IMAGE as IMAGE,
)
from trainyard_executor.kubeemulator import (
    TRAINJOBS_RESOURCE,
    Lines,
    NodeRun,
    Script,
    TrainerStandIn,
    TrainJobFails,
    backend_on,
    emulator,
    put_pod_metrics,
    trainer_stand_in,
    write_kubeconfig,
)
from trainyard_executor.kubeemulator import (
    sample_launch as _launch,
)
from trainyard_executor.kubeemulator import (
    whole_gang as _gang,
)
from trainyard_executor.metricstream import MARK
from trainyard_executor.settings import ExecutorSettings

pytestmark = pytest.mark.kubeflow

NS = "trainyard"
EXECUTOR = "kubeflow-test"
OPTS = KubeOptions(namespace=NS, executor_id=EXECUTOR)


def _manifest(launch: AttemptLaunch, trainer: TrainerOptions | None = None) -> dict[str, Any]:
    manifest = trainjob_manifest(
        launch, OPTS, trainer or TrainerOptions(), HOST_ONLY_ENV, output_dir="/out", started_at=1.0
    )
    # the Trainer API's models keep every field they know, and raise on a wrong type
    parsed = TrainerV1alpha1TrainJob.from_dict(manifest)
    assert parsed is not None and parsed.to_dict() == manifest
    return manifest


# -- the TrainJob, pure ------------------------------------------------------------------------


@pytest.mark.unit
def test_a_trainjob_is_created_suspended_with_runtime_nodes_resources_env_and_deadline(
    tmp_path: Path,
) -> None:
    launch = _launch(tmp_path, gang=_gang(3))
    trainer = TrainerOptions(runtime="torch-gpu", runtime_kind="TrainingRuntime")
    tj = _manifest(launch, trainer)

    assert (tj["apiVersion"], tj["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert tj["metadata"]["name"] == job_name(launch.job_id, 1)
    assert tj["metadata"]["labels"] == {
        LABEL_JOB: launch.job_id,
        LABEL_ATTEMPT: "1",
        LABEL_EXECUTOR: EXECUTOR,
    }
    assert tj["metadata"]["annotations"][ANNOT_TIMEOUT] == "90.5"
    spec = tj["spec"]
    assert spec["suspend"] is True
    assert spec["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "TrainingRuntime",
        "name": "torch-gpu",
    }
    assert spec["activeDeadlineSeconds"] == 91  # rounded up, never shorter than asked
    trainer_spec = spec["trainer"]
    assert trainer_spec["image"] == IMAGE and trainer_spec["command"] == launch.argv
    assert trainer_spec["numNodes"] == 3
    limits = {"cpu": "1500m", "memory": "2048Mi", "nvidia.com/gpu": "2"}
    assert trainer_spec["resourcesPerNode"] == {"requests": limits, "limits": limits}
    env = {e["name"]: e["value"] for e in trainer_spec["env"]}
    assert env["LR"] == "0.1" and env["TRAINYARD_JOB_ID"] == launch.job_id
    assert "PATH" not in env  # the executor's PATH names its host, not the image
    assert "RANK" not in env and "MASTER_ADDR" not in env  # the runtime's rendezvous, not ours
    # the attempt's Secret is owned by the TrainJob: the garbage collector removes it with it
    (owner,) = companion_metadata(tj, OPTS, "uid-1")["ownerReferences"]
    assert (owner["apiVersion"], owner["kind"], owner["uid"]) == (
        "trainer.kubeflow.org/v1alpha1",
        "TrainJob",
        "uid-1",
    )


@pytest.mark.unit
def test_no_timeout_no_deadline_and_a_split_gang_or_no_image_is_refused(tmp_path: Path) -> None:
    plain = _manifest(_launch(tmp_path, timeout_s=None, gang=None))
    assert "activeDeadlineSeconds" not in plain["spec"] and plain["spec"]["trainer"]["numNodes"] == 1
    split = Gang(master_addr="10.0.0.1", master_port=29500, world_size=4, ranks=(2, 3))
    with pytest.raises(GangSplitError):
        _manifest(_launch(tmp_path, gang=split))
    with pytest.raises(ValueError, match="needs an image"):
        _manifest(_launch(tmp_path, image=None))


@pytest.mark.unit
def test_a_step_with_inputs_patches_the_runtimes_fetch_container_and_mounts_them_read_only(
    tmp_path: Path,
) -> None:
    """The runtime patch (strict round trip through the Trainer API's models in ``_manifest``):
    the declared init container gets the plan in its env, which parses back to what the executor
    means, and the password only by reference; the trainer mounts the inputs read-only and is
    told where; the pods carry the mark the NATS NetworkPolicy admits. Without inputs, no patch."""
    fetch = FetchOptions(image="unused", nats_url="nats://nats.trainyard:4222", prefix="ty", password="pw-9")
    prep, shard = "sha256:" + "2b" * 32, "sha256:" + "3c" * 32
    launch = _launch(tmp_path, input_digests=(("prep", prep), ("train/1", shard)))
    trainer = TrainerOptions(fetch_container="trainyard-fetch")
    tj = trainjob_manifest(
        launch, OPTS, trainer, HOST_ONLY_ENV, output_dir="/out", started_at=1.0, fetch=fetch
    )
    parsed = TrainerV1alpha1TrainJob.from_dict(tj)
    assert parsed is not None and parsed.to_dict() == tj
    assert "pw-9" not in json.dumps(tj)
    (patch,) = tj["spec"]["runtimePatches"]
    assert patch["manager"] == "trainyard.dev/executor"
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == "node"
    pod = job["template"]["spec"]["template"]
    assert pod["metadata"]["labels"] == {FETCH_LABEL: "true"}
    (init,) = pod["spec"]["initContainers"]
    env = {e["name"]: e for e in init["env"]}
    plan = fetch_parse(json.loads(env[PLAN_VARIABLE]["value"]))
    assert plan.inputs == (("prep", prep), ("train/1", shard)) and plan.workdir is None
    assert (plan.nats_url, plan.prefix, plan.inputs_dir) == (fetch.nats_url, "ty", "/trainyard/inputs")
    secret_ref = env["TRAINYARD_FETCH_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert secret_ref["name"] == f"{tj['metadata']['name']}-secrets"
    assert init["volumeMounts"] == [{"name": "inputs", "mountPath": "/trainyard/inputs"}]
    (node,) = pod["spec"]["containers"]
    assert node == {
        "name": "node",
        "volumeMounts": [{"name": "inputs", "mountPath": "/trainyard/inputs", "readOnly": True}],
    }
    assert pod["spec"]["volumes"] == [{"name": "inputs", "emptyDir": {}}]
    trainer_env = {e["name"]: e.get("value") for e in tj["spec"]["trainer"]["env"]}
    assert trainer_env["TRAINYARD_INPUTS"] == "/trainyard/inputs"
    assert "runtimePatches" not in _manifest(_launch(tmp_path), trainer)["spec"]


@pytest.mark.unit
def test_a_trainjob_stored_without_its_runtime_patches_is_caught(tmp_path: Path) -> None:
    """An older Trainer's API prunes ``runtimePatches``: the stored object says so, and the
    executor must not resume pods that would run without the step's inputs."""
    fetch = FetchOptions(image="unused", nats_url="nats://n:4222", prefix="ty", password="pw")
    launch = _launch(tmp_path, input_digests=(("prep", "sha256:" + "2b" * 32),))
    trainer = TrainerOptions(fetch_container="trainyard-fetch")
    sent = trainjob_manifest(
        launch, OPTS, trainer, HOST_ONLY_ENV, output_dir="/o", started_at=1.0, fetch=fetch
    )
    pruned = {**sent, "spec": {k: v for k, v in sent["spec"].items() if k != "runtimePatches"}}
    said = dropped_patches(sent, pruned)
    assert said is not None and "Trainer API 2.3" in said
    assert dropped_patches(sent, sent) is None
    plain = _manifest(_launch(tmp_path))
    assert dropped_patches(plain, plain) is None


@pytest.mark.unit
def test_selected_by_settings_with_its_runtime_and_the_pools_quota(tmp_path: Path) -> None:
    settings = ExecutorSettings(
        backend="kubeflow",
        id="kf-pool",
        cpu=32,
        memory=131072,
        gpu=4,
        kube_namespace="ml",
        kubeflow_runtime="torch-gpu",
    )
    backend = make_backend(settings, tmp_path)  # no API call yet: the client is made on first use
    assert isinstance(backend, KubeflowBackend) and backend.name == "kubeflow"
    assert backend.capacity() == Resources(cpu=32.0, memory_mb=131072, gpu=4)
    assert backend.trainer.runtime == "torch-gpu" and backend.container == "node"
    assert backend.options.namespace == "ml"
    with pytest.raises(ValueError, match="TRAINYARD_EXECUTOR_CPU"):
        make_backend(ExecutorSettings(backend="kubeflow", id="kf-pool"), tmp_path)


# -- the client side, against kmock and the stand-in Trainer -------------------------------------


class Cluster:
    """kmock with the TrainJob kind, and the stand-in Trainer following ``script``."""

    def __init__(self, mock: Any) -> None:
        self.mock = mock
        self.script: Script = lambda tj: [NodeRun(0)] * tj["spec"]["trainer"]["numNodes"]

    def backend(self, **kw: Any) -> KubeflowBackend:
        backend: KubeflowBackend = backend_on(self.mock, KubeflowBackend, OPTS, **kw)
        return backend

    def trainjobs(self) -> dict[str, dict[str, Any]]:
        return TrainerStandIn(self.mock, NS, self.script).trainjobs()

    def pods(self) -> list[str]:
        return [
            n for (r, _ns, n), o in list(self.mock.objects.items()) if r.plural == "pods" and not o.deleted
        ]

    def requests(self, method: str, fragment: str) -> list[Any]:
        return [r for r in list(self.mock) if r.method.value == method and fragment in str(r.url)]

    async def until(self, what: Any, deadline_s: float = 15.0) -> Any:
        end = asyncio.get_running_loop().time() + deadline_s
        while not (value := what()):
            assert asyncio.get_running_loop().time() < end, "condition not met in time"
            await asyncio.sleep(0.02)
        return value


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with emulator(TRAINJOBS_RESOURCE) as mock:
        state = Cluster(mock)
        async with trainer_stand_in(mock, NS, lambda tj: state.script(tj)):
            yield state


async def _wait(attempt: Any) -> AttemptOutcome:
    return await asyncio.wait_for(attempt.wait(), 30)


async def test_a_trainjob_is_created_suspended_resumed_and_completes_with_its_log(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Against kmock and the stand-in Trainer: create (suspended), resume, Complete, log, release."""
    digest = "sha256:" + "7f" * 32
    image_id = f"registry.example/train@{digest}"
    cluster.script = lambda tj: [NodeRun(0, b"epoch 1\nepoch 2\nno newline at the end", image_id=image_id)]
    backend = cluster.backend()
    lines = Lines()
    attempt = await backend.start(_launch(tmp_path), lines)
    assert isinstance(attempt, KubeAttempt)
    outcome = await _wait(attempt)

    assert (outcome.kind, outcome.exit_code, outcome.reason) == ("succeeded", 0, "exit code 0")
    assert outcome.runtime is not None and outcome.runtime.image_digest == digest  # the node's imageID
    assert lines.lines == ["epoch 1", "epoch 2", "no newline at the end"]
    (create,) = cluster.requests("POST", "/trainjobs")
    (resume,) = [
        r for r in cluster.requests("PATCH", f"/trainjobs/{attempt.name}") if "/status" not in str(r.url)
    ]
    assert list(cluster.mock).index(create) < list(cluster.mock).index(resume)
    assert create.data["spec"]["suspend"] is True  # created suspended...
    assert resume.data == {"spec": {"suspend": False}}  # ...then resumed
    follow = cluster.requests("GET", "/log")
    assert follow and "container=node" in str(follow[0].url)
    await attempt.release()
    assert cluster.trainjobs() == {}
    await cluster.until(lambda: not cluster.pods())  # the stand-in's garbage collection


async def test_a_failed_node_fails_the_attempt_with_its_rank_and_exit_code(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Against kmock and the stand-in Trainer: two nodes, the second exits 3; logs tagged by rank."""
    cluster.script = lambda tj: [NodeRun(0, b"hello from 0\n"), NodeRun(3, b"hello from 1\n")]
    lines = Lines()
    attempt = await cluster.backend().start(_launch(tmp_path, gang=_gang(2)), lines)
    outcome = await _wait(attempt)
    assert (outcome.kind, outcome.exit_code, outcome.reason) == ("failed", 3, "rank 1 exit code 3")
    assert sorted(lines.lines) == ["[rank 0] hello from 0", "[rank 1] hello from 1"]
    assert cluster.trainjobs()[attempt.name]["spec"]["trainer"]["numNodes"] == 2


@pytest.mark.insight
async def test_rank_0s_reports_are_taken_out_of_its_log_and_another_ranks_dropped(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Against kmock and the stand-in Trainer: a TrainJob's nodes are the same KubeAttempt's pods, so
    rank 0's marked lines go to the attempt's reports and another rank's are dropped and counted;
    neither reaches the job's log. (The reporter is not mounted in a TrainJob: docs/insight.md.)"""
    report = MARK + b'{"step": 4, "time": 1.0, "values": {"loss": 0.5}}\n'
    cluster.script = lambda tj: [NodeRun(0, b"a\n" + report + b"b\n"), NodeRun(0, report + b"c\n")]
    lines = Lines()
    attempt = await cluster.backend().start(_launch(tmp_path, gang=_gang(2)), lines)
    assert isinstance(attempt, KubeAttempt)
    env = {e["name"]: e.get("value") for e in cluster.trainjobs()[attempt.name]["spec"]["trainer"]["env"]}
    assert env["TRAINYARD_METRICS_STREAM"] == "stderr"
    assert (await _wait(attempt)).kind == "succeeded"
    assert sorted(lines.lines) == ["[rank 0] a", "[rank 0] b", "[rank 1] c"]
    assert attempt.reports.read()[0] == report[len(MARK) :]
    assert attempt.reports.dropped.first == "a report from rank 1 (only rank 0 reports)"


async def test_a_failed_condition_without_pods_gives_its_reason(cluster: Cluster, tmp_path: Path) -> None:
    """Against kmock and the stand-in Trainer: the TrainJob fails before any pod (a runtime that
    does not exist): the condition's reason and message are the attempt's."""
    cluster.script = lambda tj: TrainJobFails(
        "TrainingRuntimeNotFound", "ClusterTrainingRuntime torch-distributed not found"
    )
    attempt = await cluster.backend().start(_launch(tmp_path), Lines())
    outcome = await _wait(attempt)
    assert outcome.kind == "failed" and outcome.exit_code is None
    assert (
        outcome.reason
        == "job failed: TrainingRuntimeNotFound: ClusterTrainingRuntime torch-distributed not found"
    )


async def test_the_deadline_ends_a_trainjob_as_timed_out(cluster: Cluster, tmp_path: Path) -> None:
    """Against kmock and the stand-in Trainer (which enforces activeDeadlineSeconds): Failed with
    DeadlineExceeded is timed_out."""
    cluster.script = lambda tj: [NodeRun(None, b"still training\n")]
    attempt = await cluster.backend().start(_launch(tmp_path, timeout_s=0.5), Lines())
    outcome = await _wait(attempt)
    assert (outcome.kind, outcome.reason) == ("timed_out", "timed out after 0.5s")


async def test_cancel_deletes_the_trainjob_with_the_grace(cluster: Cluster, tmp_path: Path) -> None:
    """Against kmock and the stand-in Trainer: cancel = delete (foreground, grace), then cancelled."""
    cluster.script = lambda tj: [NodeRun(None, b"step 1\n")]
    lines = Lines()
    attempt = await cluster.backend().start(_launch(tmp_path), lines)
    assert isinstance(attempt, KubeAttempt)
    await cluster.until(lambda: lines.lines)
    await attempt.cancel()
    outcome = await _wait(attempt)
    assert outcome.kind == "cancelled"
    (delete,) = cluster.requests("DELETE", f"/trainjobs/{attempt.name}")
    assert "propagationPolicy=Foreground" in str(delete.url) and "gracePeriodSeconds=7" in str(delete.url)
    assert cluster.trainjobs() == {}


@pytest.mark.insight
async def test_a_trainjobs_node_pods_are_sampled_together_from_the_metrics_api(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Against kmock, the stand-in Trainer and ``put_pod_metrics`` (a stand-in for metrics-server):
    a TrainJob's attempt reads its node pods' PodMetrics (the ``node`` containers) and sums them,
    as a Job's does (kube_usage.py)."""
    cluster.script = lambda tj: [NodeRun(None, b"up\n"), NodeRun(None, b"up\n")]
    attempt = await cluster.backend().start(_launch(tmp_path, gang=_gang(2)), Lines())
    assert isinstance(attempt, KubeAttempt)
    pods = await cluster.until(lambda: len(attempt._live_pods) == 2 and attempt._live_pods)
    for pod, cpu in zip(pods, ("250m", "750m"), strict=True):
        await put_pod_metrics(cluster.mock, NS, pod, {"node": (cpu, "64Mi")}, "2026-12-03T18:00:15Z")
    reading = await asyncio.to_thread(attempt.read_usage)
    assert reading is not None
    assert (reading.cpu_cores, reading.rss_bytes, reading.cpu_seconds) == (1.0, 128 * 1024 * 1024, 15.0)
    await attempt.cancel()
    assert (await _wait(attempt)).kind == "cancelled"


async def test_source_and_workdir_are_refused_before_anything_is_created(
    cluster: Cluster, tmp_path: Path
) -> None:
    backend = cluster.backend()
    refused = {
        "source": _launch(tmp_path, source_repo="https://git.example/r.git", source_commit="abc"),
        # a cluster backend is given the digest (it fetches in the pod; kubeflow's pods are not ours)
        "workdir": _launch(tmp_path, workdir_digest="sha256:" + "1a" * 32),
    }
    for field, launch in refused.items():
        outcome = await _wait(await backend.start(launch, Lines()))
        assert (
            outcome.kind == "failed" and f"{field} is not supported by the kubeflow backend" in outcome.reason
        )
    assert cluster.requests("POST", "/trainjobs") == []


async def test_secret_env_goes_to_a_secret_of_the_attempt_never_into_the_trainjob(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Against kmock and the stand-in Trainer: the value is in the attempt's Secret (owned by the
    TrainJob), the TrainJob only refers to it; both go when the outcome is recorded."""
    token = "s3cr3t-value-42"
    launch = _launch(tmp_path, env={"API_TOKEN": token, "LR": "0.1"}, secret_env=("API_TOKEN",))
    attempt = await cluster.backend().start(launch, Lines())
    assert isinstance(attempt, KubeAttempt)
    assert (await _wait(attempt)).kind == "succeeded"
    (sent,) = [r.data for r in cluster.requests("POST", "/trainjobs")]
    assert token not in str(sent)
    env = {e["name"]: e for e in sent["spec"]["trainer"]["env"]}
    ref = {"secretKeyRef": {"name": f"{attempt.name}-secrets", "key": "env.API_TOKEN"}}
    assert env["API_TOKEN"] == {"name": "API_TOKEN", "valueFrom": ref} and env["LR"]["value"] == "0.1"
    (secret,) = [r.data for r in cluster.requests("POST", "/secrets")]
    assert secret["stringData"] == {"env.API_TOKEN": token}
    (owned,) = [r.data for r in cluster.requests("PATCH", f"/secrets/{attempt.name}-secrets")]
    assert owned["metadata"]["labels"][LABEL_JOB] == launch.job_id
    await attempt.release()
    assert cluster.requests("DELETE", f"/secrets/{attempt.name}-secrets")


async def test_a_step_with_inputs_runs_as_a_trainjob_whose_secret_alone_holds_the_fetch_password(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Against kmock and the stand-in Trainer (which does not run init containers): the TrainJob
    is created with the runtime patch, the fetcher's password is in the attempt's Secret and
    nowhere in the TrainJob, and the attempt runs to its end."""
    fetch = FetchOptions(image="unused", nats_url="nats://nats:4222", prefix="ty", password="pw-fetch-77")
    opts = KubeOptions(namespace=NS, executor_id=EXECUTOR, fetch=fetch)
    trainer = TrainerOptions(fetch_container="trainyard-fetch")
    backend = backend_on(cluster.mock, KubeflowBackend, opts, trainer=trainer)
    launch = _launch(tmp_path, input_digests=(("prep", "sha256:" + "2b" * 32),))
    attempt = await backend.start(launch, Lines())
    assert isinstance(attempt, KubeAttempt), attempt
    assert (await _wait(attempt)).kind == "succeeded"
    (sent,) = [r.data for r in cluster.requests("POST", "/trainjobs")]
    assert "pw-fetch-77" not in json.dumps(sent)
    assert [p["manager"] for p in sent["spec"]["runtimePatches"]] == ["trainyard.dev/executor"]
    (secret,) = [r.data for r in cluster.requests("POST", "/secrets")]
    assert "pw-fetch-77" in secret["stringData"].values()
    await attempt.release()


async def test_after_a_restart_a_trainjob_left_suspended_is_found_resumed_and_followed(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Against kmock and the stand-in Trainer: the executor stopped between create and resume (the
    TrainJob is made here as it would have left it); a new one finds it by label, adopts it and
    resumes it, and the stand-in then runs it. Another executor's TrainJob is not found."""
    cluster.script = lambda tj: [NodeRun(0, b"ran after the restart\n")]
    launch = _launch(tmp_path, attempt=2)
    for owner in (EXECUTOR, "someone-else"):
        opts = KubeOptions(namespace=NS, executor_id=owner)
        body = trainjob_manifest(
            _launch(tmp_path, attempt=2, job_id=launch.job_id if owner == EXECUTOR else "0other0000000001"),
            opts,
            TrainerOptions(),
            HOST_ONLY_ENV,
            output_dir=str(tmp_path / "out"),
            started_at=time.time(),  # the executor's own deadline counts from it
        )
        resp = await cluster.mock.post(
            f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainjobs", json=body
        )
        assert resp.status == 200, await resp.text()
    await cluster.until(lambda: all(tj.get("status") for tj in cluster.trainjobs().values()))  # Suspended
    assert cluster.pods() == []  # suspended: nothing runs

    backend = cluster.backend()
    (found,) = await backend.find_attempts()
    assert (found.job_id, found.attempt, found.ref) == (launch.job_id, 2, job_name(launch.job_id, 2))
    lines = Lines()
    adopted = await backend.adopt(found, lines)
    assert adopted.launch.timeout_s == 90.5
    outcome = await _wait(adopted)
    assert outcome.kind == "succeeded" and lines.lines == ["ran after the restart"]


async def test_a_second_start_attaches_and_another_executors_trainjob_is_not_taken(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.script = lambda tj: [NodeRun(None)]
    launch = _launch(tmp_path)
    first = await cluster.backend().start(launch, Lines())
    second = await cluster.backend().start(launch, Lines())
    assert isinstance(first, KubeAttempt) and isinstance(second, KubeAttempt) and first.name == second.name
    assert len(cluster.trainjobs()) == 1
    url = str(cluster.mock.url).rstrip("/")
    other = KubeflowBackend(
        lambda: k8s.ApiClient(k8s.Configuration(host=url)),
        KubeOptions(namespace=NS, executor_id="someone-else"),
        Resources(1.0, 1, 0),
    )
    outcome = await _wait(await other.start(launch, Lines()))
    assert outcome.kind == "failed" and "belongs to executor" in outcome.reason
    for attempt in (first, second):
        await attempt.detach()


# -- through the services: scheduler + executor on a real nats-server ---------------------------


@pytest.mark.service
async def test_a_job_runs_through_the_services_as_a_trainjob(
    cluster: Cluster, nats_server: Any, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against kmock and the stand-in Trainer: the scheduler places a 2-replica job on a kubeflow
    executor found through a kubeconfig; the executor runs it as one TrainJob of two nodes, ships
    their logs and records the outcome."""
    from trainyard_contracts import JobSpec
    from trainyard_executor.app import create_app as executor_app
    from trainyard_scheduler.testkit import quick_scheduler
    from trainyard_shared.testing.helpers import Bus, common_settings, running

    server = str(cluster.mock.url).rstrip("/")
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", server)))
    monkeypatch.setenv("TRAINYARD_EXECUTOR_BACKEND", "kubeflow")
    cluster.script = lambda tj: [NodeRun(0, f"node {i} loss 0.25\n".encode()) for i in range(2)]
    settings = ExecutorSettings(
        id="kf-svc", cpu=16, memory=65536, gpu=0, kube_namespace=NS, heartbeat_seconds=0.5, grace_seconds=2
    )
    common = common_settings(nats_server.url, prefix, tmp_path / "data")
    sched = quick_scheduler(common)
    spec = JobSpec(name="on-kubeflow", image=IMAGE, command=["torchrun", "train.py"], replicas=2, timeout=600)
    async with Bus(nats_server.url, prefix) as bus, running(sched), running(executor_app(common, settings)):
        job_id = await bus.submit(spec)
        record = await bus.wait_state(job_id, "succeeded", "failed", "timed_out", "cancelled")
        assert record.state.value == "succeeded", record.reason
        assert record.attempts[0].executor_id == "kf-svc"
        (create,) = cluster.requests("POST", "/trainjobs")
        sent = create.data
        assert sent["metadata"]["labels"][LABEL_JOB] == job_id
        assert sent["spec"]["trainer"]["numNodes"] == 2 and sent["spec"]["activeDeadlineSeconds"] == 600
        assert {"[rank 0] node 0 loss 0.25", "[rank 1] node 1 loss 0.25"} <= set(await bus.log_text(job_id))
        await cluster.until(lambda: not cluster.trainjobs())  # released once the outcome was recorded
