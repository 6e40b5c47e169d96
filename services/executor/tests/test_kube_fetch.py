"""A Kubernetes job pod's packed workdir and $TRAINYARD_INPUTS: the ``fetch`` init container.

Two stand-ins (no API server can run here, /work/shared/ENVIRONMENT.md): ``kubernetes_validate``
checks the Job against the Kubernetes OpenAPI schemas (strict), and kmock's emulator
(trainyard_executor.kubeemulator) serves the API the backend talks to for real; it runs no
container, so the test plays the kubelet (a pod whose init container failed). What the init
container itself does is tested against a real nats-server in tests/security/test_kube_fetcher.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from trainyard_executor.backends.kube_fetch import (
    FETCH_CONTAINER,
    FETCH_LABEL,
    FetchOptions,
    fetch_options,
)
from trainyard_executor.backends.kube_manifests import KubeOptions, job_manifest
from trainyard_executor.backends.kube_secret import FETCH_PASSWORD_KEY
from trainyard_executor.backends.kube_trainjob import TrainerOptions
from trainyard_executor.backends.kubeflow import KubeflowBackend
from trainyard_executor.backends.kubernetes import KubernetesBackend
from trainyard_executor.fetch import FetchLimits, parse
from trainyard_executor.jobenv import HOST_ONLY_ENV
from trainyard_executor.kubeemulator import SAMPLE_IMAGE, Lines, NodeRun, backend_on, emulator, pod_object
from trainyard_executor.kubeemulator import sample_launch as _launch
from trainyard_executor.settings import ExecutorSettings
from trainyard_shared.settings import CommonSettings

pytestmark = pytest.mark.kubernetes

NS = "trainyard-jobs"
PASSWORD = "fetcher-pw-7Qx2"
WORKDIR = "sha256:" + "1a" * 32
PREP = "sha256:" + "2b" * 32
SHARD = "sha256:" + "3c" * 32
FETCH = FetchOptions(
    image="trainyard/executor:0.1.0",
    nats_url="nats://nats.trainyard:4222",
    prefix="trainyard",
    password=PASSWORD,
    limits=FetchLimits(1000, 10, 2000, 20, 5000),
)
OPTS = KubeOptions(namespace=NS, executor_id="kube-fetch", default_image=SAMPLE_IMAGE, fetch=FETCH)


def _containers(job: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod.get("initContainers", []), container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.unit
def test_a_workdir_and_inputs_are_fetched_by_an_init_container_holding_the_only_password_ref(
    tmp_path: Path,
) -> None:
    launch = _launch(tmp_path, workdir_digest=WORKDIR, input_digests=(("prep", PREP), ("shards/1", SHARD)))
    job = job_manifest(launch, OPTS, HOST_ONLY_ENV, output_dir="/out", started_at=1.0)
    kubernetes_validate.validate(job, "1.37.0", strict=True)
    (fetch,), container = _containers(job)
    assert fetch["name"] == FETCH_CONTAINER and fetch["image"] == FETCH.image
    # argv only, and what it says is the plan: the digests, the folders, the executor's caps
    assert fetch["command"][:3] == ["python", "-m", "trainyard_executor.fetch"]
    plan = parse(fetch["command"][3:])
    assert (plan.workdir, plan.inputs) == (WORKDIR, (("prep", PREP), ("shards/1", SHARD)))
    assert (plan.nats_url, plan.prefix, plan.limits) == (FETCH.nats_url, "trainyard", FETCH.limits)
    assert (plan.work_dir, plan.inputs_dir) == ("/trainyard/work", "/trainyard/inputs")
    ref = {"secretKeyRef": {"name": f"{job['metadata']['name']}-secrets", "key": FETCH_PASSWORD_KEY}}
    assert _env(fetch) == {"TRAINYARD_FETCH_NATS_USER": "fetcher", "TRAINYARD_FETCH_NATS_PASSWORD": ref}
    assert fetch["securityContext"]["allowPrivilegeEscalation"] is False
    assert fetch["resources"]["limits"] == {"cpu": "1500m", "memory": "2048Mi"}  # no GPU held to fetch
    # the job container: no reference to the password, the source as its cwd, the inputs read-only
    assert FETCH_PASSWORD_KEY not in json.dumps(container) and PASSWORD not in json.dumps(job)
    assert container["workingDir"] == "/trainyard/work/src"
    env = _env(container)
    assert (
        env["TRAINYARD_INPUTS"] == "/trainyard/inputs" and env["TRAINYARD_WORKDIR"] == "/trainyard/work/src"
    )
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/trainyard/inputs"]["readOnly"] is True
    assert not mounts["/trainyard/work"].get("readOnly")
    assert {m["mountPath"]: m.get("readOnly", False) for m in fetch["volumeMounts"]} == {
        "/trainyard/work": False,
        "/trainyard/inputs": False,
    }
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["inputs"] == {"name": "inputs", "emptyDir": {}}
    # the mark the NATS NetworkPolicy admits, on the pod only (not on the Job)
    assert job["spec"]["template"]["metadata"]["labels"][FETCH_LABEL] == "true"
    assert FETCH_LABEL not in job["metadata"]["labels"]


@pytest.mark.unit
def test_a_job_without_digests_has_no_fetch_nor_mark_and_a_source_job_fetches_its_inputs_after_git(
    tmp_path: Path,
) -> None:
    plain = job_manifest(_launch(tmp_path), OPTS, HOST_ONLY_ENV, output_dir="/out", started_at=1.0)
    init, container = _containers(plain)
    assert init == [] and FETCH_LABEL not in plain["spec"]["template"]["metadata"]["labels"]
    assert "TRAINYARD_INPUTS" not in _env(container) and "workingDir" not in container
    step = _launch(tmp_path, source_repo="https://git.example/r.git", input_digests=(("prep", PREP),))
    job = job_manifest(step, OPTS, HOST_ONLY_ENV, output_dir="/out", started_at=1.0)
    kubernetes_validate.validate(job, "1.37.0", strict=True)
    init, container = _containers(job)
    assert [c["name"] for c in init] == ["source", "checkout", FETCH_CONTAINER]
    assert [m["mountPath"] for m in init[2]["volumeMounts"]] == ["/trainyard/inputs"]  # not the clone
    assert "--workdir" not in init[2]["command"]
    assert container["workingDir"] == "/trainyard/work/src"


@pytest.mark.unit
def test_fetch_options_come_from_the_settings_and_never_show_the_password() -> None:
    settings = ExecutorSettings(
        id="k",
        backend="kubernetes",
        kube_fetch_image="trainyard/executor:0.1.0",
        kube_fetch_nats_password=PASSWORD,
        max_workdir_bytes=4096,
    )
    common = CommonSettings(nats_url="nats://nats.trainyard:4222", prefix="ty-test")
    options = fetch_options(settings, common)
    assert options is not None and options.password == PASSWORD and PASSWORD not in repr(options)
    assert (options.nats_url, options.prefix, options.user) == (common.nats_url, "ty-test", "fetcher")
    assert options.limits.workdir_bytes == 4096
    assert fetch_options(ExecutorSettings(id="k", backend="kubernetes", kube_fetch_image="x")) is None


@pytest.fixture
async def mock() -> AsyncIterator[Any]:
    async with emulator("v1/configmaps", "v1/secrets") as served:
        yield served


def _objects(mock: Any, plural: str) -> dict[str, dict[str, Any]]:
    return {n: o.raw for (r, _ns, n), o in list(mock.objects.items()) if r.plural == plural and not o.deleted}


async def _until(what: Any, deadline_s: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not (value := what()):
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.02)
    return value


async def test_the_password_goes_to_the_attempts_secret_and_a_refused_fetch_fails_the_attempt_naming_it(
    mock: Any, tmp_path: Path
) -> None:
    """Against kmock: the attempt's Secret holds the password (and the Job none); a pod whose
    fetch init container ended with exit 1 and a termination message (as the entry writes it)
    fails the attempt with that message once the Job has failed."""
    backend = backend_on(mock, KubernetesBackend, OPTS)
    launch = _launch(tmp_path, input_digests=(("prep", PREP),))
    attempt = await backend.start(launch, Lines())
    name = attempt.name
    job = await _until(lambda: _objects(mock, "jobs").get(name))
    secret = _objects(mock, "secrets")[f"{name}-secrets"]
    assert secret["stringData"] == {FETCH_PASSWORD_KEY: PASSWORD}
    assert PASSWORD not in json.dumps(job)

    labels = job["spec"]["template"]["metadata"]["labels"]
    pod = pod_object(
        f"{name}-x7k2p", NS, 0, container="job", image=SAMPLE_IMAGE, labels=labels, run=NodeRun(None)
    )
    pod["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "PodInitializing"}}
    why = "the outputs of step prep are refused: member 'a/../../x': '..' leads outside the folder"
    pod["status"]["initContainerStatuses"] = [
        {
            "name": FETCH_CONTAINER,
            "image": FETCH.image,
            "imageID": "",
            "ready": False,
            "restartCount": 0,
            "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": why}},
        }
    ]
    assert (await mock.post(f"/api/v1/namespaces/{NS}/pods", json=pod)).status == 200
    body = {
        "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
    }
    assert (await mock.patch(f"/apis/batch/v1/namespaces/{NS}/jobs/{name}/status", json=body)).status == 200
    outcome = await asyncio.wait_for(attempt.wait(), 30)
    assert outcome.kind == "failed" and outcome.exit_code is None
    assert outcome.reason == f"init container fetch failed (exit code 1): {why}"
    await attempt.release()


async def test_without_fetch_settings_a_workdir_job_is_refused_not_run_without_its_folder(
    mock: Any, tmp_path: Path
) -> None:
    backend = backend_on(mock, KubernetesBackend, KubeOptions(namespace=NS, default_image=SAMPLE_IMAGE))
    outcome = await (await backend.start(_launch(tmp_path, workdir_digest=WORKDIR), Lines())).wait()
    assert outcome.kind == "failed" and "TRAINYARD_EXECUTOR_KUBE_FETCH_IMAGE" in outcome.reason
    assert _objects(mock, "jobs") == {}


async def test_a_step_that_passes_its_outputs_needs_the_outputs_claim(mock: Any, tmp_path: Path) -> None:
    """Packing reads the outputs on the claim this executor mounts; without it the step is refused
    before it runs (its dependents would miss the folder), with it the Job is made."""
    backend = backend_on(mock, KubernetesBackend, OPTS)
    outcome = await (await backend.start(_launch(tmp_path, pass_outputs=True), Lines())).wait()
    assert outcome.kind == "failed" and "TRAINYARD_EXECUTOR_KUBE_OUTPUTS_CLAIM" in outcome.reason
    assert _objects(mock, "jobs") == {} and not backend.outputs_on_host
    claimed = KubeOptions(namespace=NS, default_image=SAMPLE_IMAGE, outputs_claim="trainyard-outputs")
    with_claim = backend_on(mock, KubernetesBackend, claimed, outputs_mount=tmp_path / "claim")
    assert with_claim.outputs_on_host and with_claim.refusal(_launch(tmp_path, pass_outputs=True)) is None


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("workdir_digest", WORKDIR, "workdir is not supported by the kubeflow backend"),
        ("input_digests", (("prep", PREP),), "TRAINYARD_EXECUTOR_KUBEFLOW_FETCH_CONTAINER"),
        ("pass_outputs", True, "$TRAINYARD_INPUTS"),
    ],
)
async def test_kubeflow_refuses_workdirs_outputs_passed_on_and_inputs_without_the_runtimes_fetch(
    mock: Any, tmp_path: Path, field: str, value: Any, said: str
) -> None:
    """A TrainJob's pods are the Trainer's: inputs reach them only through the fetch init container
    the runtime declares (kube_fetch.trainjob_fetch_patch), a workdir and a claim not at all (even
    with the fetch settings and a claim), so such an attempt fails saying so."""
    claimed = KubeOptions(namespace=NS, default_image=SAMPLE_IMAGE, fetch=FETCH, outputs_claim="c")
    backend = backend_on(mock, KubeflowBackend, claimed, outputs_mount=tmp_path / "claim")
    refused = backend.refusal(_launch(tmp_path, **{field: value}))
    assert refused is not None and said in refused and "kubeflow" in refused
    declared = backend_on(
        mock,
        KubeflowBackend,
        claimed,
        outputs_mount=tmp_path / "claim",
        trainer=TrainerOptions(fetch_container="trainyard-fetch"),
    )
    still = declared.refusal(_launch(tmp_path, **{field: value}))
    assert (still is None) == (field == "input_digests"), still
    unset = KubeOptions(namespace=NS, default_image=SAMPLE_IMAGE)
    no_fetch = backend_on(mock, KubeflowBackend, unset, trainer=TrainerOptions(fetch_container="f"))
    assert (no_fetch.refusal(_launch(tmp_path, **{field: value})) or "").startswith(
        "this kubernetes executor cannot fetch"
    ) == (field == "input_digests")
