"""The kubernetes backend: its manifests validated offline, its client side against kmock.

No API server can run on this machine (see /work/shared/ENVIRONMENT.md). Two stand-ins:

- ``kubernetes_validate`` checks the generated Job and Service against the Kubernetes 1.37 OpenAPI
  schemas (strict: no unknown fields) - the shape of what we would send, not how a cluster acts.
- ``kmock``'s KubernetesEmulator is an in-memory HTTP emulation of the API that the official client
  talks to for real (create, get, list, watch, patch, delete). It has no controllers, admission,
  validation or label-selector filtering, so each test plays the Job controller and the kubelet:
  it creates the pods, sets their container states and the Job's conditions through the same API,
  and checks what the backend reports. Pod logs are scripted responses of the ``log`` subresource
  (the whole log at once): line splitting, rank tags and the follow request are ours and tested;
  a live follow of a running container is not.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kmock
import kubernetes_validate
import pytest

from trainyard_executor.app import make_backend
from trainyard_executor.backends.base import AttemptOutcome, Gang, Resources
from trainyard_executor.backends.kube_attempt import KubeAttempt
from trainyard_executor.backends.kube_manifests import (
    COMPLETION_INDEX_ANNOT,
    LABEL_ATTEMPT,
    LABEL_EXECUTOR,
    LABEL_JOB,
    GangSplitError,
    KubeOptions,
    job_manifest,
    job_name,
    label_value,
    service_manifest,
)
from trainyard_executor.backends.kube_status import deciding_exit, image_digest, job_end
from trainyard_executor.backends.kubernetes import KubernetesBackend
from trainyard_executor.jobenv import HOST_ONLY_ENV
from trainyard_executor.kubeemulator import SAMPLE_IMAGE as IMAGE
from trainyard_executor.kubeemulator import Lines, backend_on
from trainyard_executor.kubeemulator import sample_launch as _launch
from trainyard_executor.kubeemulator import whole_gang as _gang
from trainyard_executor.kubeemulator import write_kubeconfig as _kubeconfig
from trainyard_executor.metricstream import MARK
from trainyard_executor.settings import ExecutorSettings

pytestmark = pytest.mark.kubernetes

K8S_VERSION = "1.37.0"
NS = "trainyard"
EXECUTOR = "kube-test"
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


OPTS = KubeOptions(namespace=NS, executor_id=EXECUTOR, default_image=IMAGE)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# -- manifests, validated offline ------------------------------------------------------------


@pytest.mark.unit
def test_plain_job_manifest_is_valid_and_carries_limits_deadline_and_labels(tmp_path: Path) -> None:
    launch = _launch(tmp_path)
    job = job_manifest(launch, OPTS, HOST_ONLY_ENV, output_dir="/out", started_at=1.0)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)

    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 91  # 90.5 s rounded up, never shorter than asked
    assert spec["ttlSecondsAfterFinished"] == 3600
    assert "completionMode" not in spec
    labels = job["metadata"]["labels"]
    assert labels == {LABEL_JOB: launch.job_id, LABEL_ATTEMPT: "1", LABEL_EXECUTOR: EXECUTOR}
    pod = spec["template"]["spec"]
    assert spec["template"]["metadata"]["labels"] == labels
    assert pod["restartPolicy"] == "Never"
    assert pod["terminationGracePeriodSeconds"] == 7
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert container["command"] == launch.argv  # the argv itself: no shell, no args split
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["limits"] == {"cpu": "1500m", "memory": "2048Mi", "nvidia.com/gpu": "2"}
    assert container["resources"]["requests"] == container["resources"]["limits"]
    env = _env(container)
    assert env["LR"] == "0.1" and env["TRAINYARD_JOB_ID"] == launch.job_id
    assert "PATH" not in env  # the executor's PATH names its host, not the image
    assert env["TRAINYARD_OUTPUT_DIR"] == "/trainyard/outputs"
    assert "RANK" not in env and "MASTER_ADDR" not in env


@pytest.mark.unit
def test_a_job_that_names_path_itself_keeps_it_and_no_timeout_means_no_deadline(tmp_path: Path) -> None:
    launch = _launch(tmp_path, inherited_env=(), timeout_s=None, gpu=0, cpu=0.0, memory_mb=0)
    job = job_manifest(launch, OPTS, HOST_ONLY_ENV, output_dir="/out", started_at=1.0)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert _env(container)["PATH"] == "/executor/venv/bin:/usr/bin"
    assert "activeDeadlineSeconds" not in job["spec"]
    assert "resources" not in container


@pytest.mark.unit
def test_gang_is_an_indexed_job_with_a_headless_service_and_torchrun_variables(tmp_path: Path) -> None:
    launch = _launch(tmp_path, gang=_gang(3))
    job = job_manifest(launch, OPTS, HOST_ONLY_ENV, output_dir="/out", started_at=1.0)
    service = service_manifest(job, OPTS, owner_uid="1f0e-uid")
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    kubernetes_validate.validate(service, K8S_VERSION, strict=True)

    name = job["metadata"]["name"]
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    assert spec["backoffLimit"] == 0
    assert spec["template"]["spec"]["subdomain"] == service["metadata"]["name"] == name
    env = _env(spec["template"]["spec"]["containers"][0])
    assert env["MASTER_ADDR"] == f"{name}-0.{name}"  # rank 0's pod under the headless Service
    assert env["MASTER_PORT"] == "29500"  # the pod's own network: the executor's loopback port is moot
    assert env["WORLD_SIZE"] == "3"
    rank_ref = {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOT}']"}}
    assert env["RANK"] == rank_ref and env["TRAINYARD_RANK"] == rank_ref
    assert env["LOCAL_RANK"] == "0"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {LABEL_JOB: launch.job_id, LABEL_ATTEMPT: "1"}
    assert service["metadata"]["ownerReferences"][0]["uid"] == "1f0e-uid"


@pytest.mark.unit
def test_source_checkout_runs_in_init_containers_without_a_shell(tmp_path: Path) -> None:
    launch = _launch(tmp_path, source_repo="https://git.example/team/repo.git", source_commit="abc123")
    job = job_manifest(launch, OPTS, HOST_ONLY_ENV, output_dir="/out", started_at=1.0)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    clone, checkout = pod["initContainers"]
    assert clone["command"][0] == "git" and "clone" in clone["command"]
    assert clone["command"][-2] == "https://git.example/team/repo.git"
    assert checkout["command"][-1] == "abc123"
    assert pod["containers"][0]["workingDir"] == "/trainyard/work/src"


@pytest.mark.unit
def test_a_gang_split_across_executors_is_refused_with_the_reason(tmp_path: Path) -> None:
    split = Gang(master_addr="10.0.0.1", master_port=29500, world_size=4, ranks=(2, 3))
    with pytest.raises(GangSplitError, match=r"ranks \[2, 3\] of 4"):
        job_manifest(_launch(tmp_path, gang=split), OPTS, HOST_ONLY_ENV, output_dir="/o", started_at=1.0)


@pytest.mark.unit
@pytest.mark.parametrize(
    "job_id",
    ["0abc123def456xyz", "a" * 64, "z-" * 32, "abc---", "9" * 40 + "-" * 24],
)
@pytest.mark.parametrize("attempt", [1, 12, 1024])
def test_names_and_labels_are_dns_safe_and_distinct(job_id: str, attempt: int) -> None:
    name = job_name(job_id, attempt)
    assert DNS_1035.match(name) and len(name) <= 52, name
    assert job_name(job_id, attempt + 1) != name
    assert job_name(job_id + "q", attempt) != name
    value = label_value(job_id)
    assert len(value) <= 63 and re.match(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$", value)


@pytest.mark.unit
def test_conditions_and_container_states_map_to_outcome_kinds() -> None:
    def job(type_: str, reason: str, status: str = "True") -> dict[str, Any]:
        return {"status": {"conditions": [{"type": type_, "status": status, "reason": reason}]}}

    assert job_end(job("Complete", "")).kind == "succeeded"  # type: ignore[union-attr]
    assert job_end(job("Failed", "DeadlineExceeded")).kind == "timed_out"  # type: ignore[union-attr]
    assert job_end(job("Failed", "BackoffLimitExceeded")).kind == "failed"  # type: ignore[union-attr]
    assert job_end(job("Failed", "BackoffLimitExceeded", status="False")) is None
    assert job_end(job("FailureTarget", "PodFailurePolicy")) is None  # interim, not the end
    pods = [_pod("p0", 0, exit_code=0), _pod("p2", 2, exit_code=137), _pod("p1", 1, exit_code=1)]
    exit_ = deciding_exit(pods)
    assert exit_ is not None and (exit_.rank, exit_.exit_code) == (1, 1)


@pytest.mark.unit
def test_the_image_digest_is_read_from_the_job_containers_image_id_as_runtimes_write_it() -> None:
    digest = "sha256:" + "ab" * 32
    for image_id in (
        f"registry.example/train@{digest}",  # containerd, CRI-O: the registry's manifest digest
        f"docker-pullable://registry.example/train@{digest}",  # dockershim
        digest,  # an image the node has only locally: its image id
    ):
        assert image_digest([_pod("p0", 0, exit_code=0, image_id=image_id)]) == digest, image_id
    # the lowest rank that says speaks for a gang; no digest, or none at all: nothing
    other = "sha256:" + "cd" * 32
    gang = [_pod("p1", 1, image_id=other), _pod("p0", 0, image_id=""), _pod("p2", 2, image_id=digest)]
    assert image_digest(gang) == other
    assert image_digest([_pod("p0", 0, image_id="registry.example/train:1")]) is None
    assert image_digest([_pod("p0", 0, waiting="ErrImagePull")]) is None
    assert (
        image_digest([_pod("p0", 0, image_id=f"registry.example/train@{digest}")], container="node") is None
    )


# -- the client side against kmock -----------------------------------------------------------


def _pod(
    name: str,
    rank: int,
    *,
    exit_code: int | None = None,
    reason: str = "",
    labels: Any = None,
    waiting: str | None = None,
    image_id: str = "",
) -> dict[str, Any]:
    state: dict[str, Any] = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    if exit_code is not None:
        state = {
            "terminated": {
                "exitCode": exit_code,
                "reason": reason or ("Completed" if exit_code == 0 else "Error"),
            }
        }
    if waiting is not None:
        state = {"waiting": {"reason": waiting, "message": "pull access denied"}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": dict(labels or {}),
            "annotations": {COMPLETION_INDEX_ANNOT: str(rank)},
        },
        "spec": {"containers": [{"name": "job", "image": IMAGE}]},
        # every field the client's V1ContainerStatus requires, as a kubelet reports them
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "job",
                    "image": IMAGE,
                    "imageID": image_id,
                    "ready": False,
                    "restartCount": 0,
                    "state": state,
                }
            ],
        },
    }


class Cluster:
    """kmock plus the test's controller moves, through the same HTTP API the backend uses."""

    def __init__(self, mock: Any) -> None:
        self.mock = mock

    def backend(self, **kw: Any) -> KubernetesBackend:
        backend: KubernetesBackend = backend_on(self.mock, KubernetesBackend, OPTS, **kw)
        return backend

    def jobs(self) -> dict[str, dict[str, Any]]:
        found = {}
        for (resource, _ns, name), obj in list(self.mock.objects.items()):
            if resource.plural == "jobs" and not obj.deleted:
                found[name] = obj.raw
        return found

    def services(self) -> list[str]:
        return [
            n
            for (r, _ns, n), o in list(self.mock.objects.items())
            if r.plural == "services" and not o.deleted
        ]

    def network_policies(self) -> dict[str, dict[str, Any]]:
        return {
            n: o.raw
            for (r, _ns, n), o in list(self.mock.objects.items())
            if r.plural == "networkpolicies" and not o.deleted
        }

    def requests(self, method: str, fragment: str) -> list[Any]:
        return [r for r in list(self.mock) if r.method.value == method and fragment in str(r.url)]

    async def until(self, what: Callable[[], Any], deadline_s: float = 10.0) -> Any:
        end = time.monotonic() + deadline_s
        while not (value := what()):
            assert time.monotonic() < end, "condition not met in time"
            await asyncio.sleep(0.02)
        return value

    async def job_created(self, name: str) -> dict[str, Any]:
        return await self.until(lambda: self.jobs().get(name))  # type: ignore[no-any-return]

    async def run_pod(self, job: dict[str, Any], rank: int, log: bytes, **state: Any) -> None:
        """The kubelet's part: a pod of the Job with its container's state, and its log."""
        name = f"{job['metadata']['name']}-{rank}-x7k2p"
        self.mock[kmock.resource("v1/pods"), kmock.name(name), kmock.subresource("log")] << log
        labels = job["spec"]["template"]["metadata"]["labels"]
        resp = await self.mock.post(
            f"/api/v1/namespaces/{NS}/pods", json=_pod(name, rank, labels=labels, **state)
        )
        assert resp.status == 200, await resp.text()

    async def set_job_condition(self, name: str, type_: str, reason: str) -> None:
        """The Job controller's part: a terminal condition on the Job's status."""
        body = {"status": {"conditions": [{"type": type_, "status": "True", "reason": reason}]}}
        resp = await self.mock.patch(f"/apis/batch/v1/namespaces/{NS}/jobs/{name}/status", json=body)
        assert resp.status == 200, await resp.text()


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with kmock.KubernetesEmulator() as mock, kmock.Server(mock):
        # a real API lists an empty kind as []; the emulator only knows kinds declared or seen
        for resource in (
            "batch/v1/jobs",
            "v1/pods",
            "v1/services",
            "v1/configmaps",
            "networking.k8s.io/v1/networkpolicies",
        ):
            mock.resources[resource] = {}
        yield Cluster(mock)


async def _wait(attempt: Any) -> AttemptOutcome:
    return await asyncio.wait_for(attempt.wait(), 30)


async def test_a_job_that_completes_succeeds_with_its_log(cluster: Cluster, tmp_path: Path) -> None:
    """Client side only, against kmock: create the Job, see Complete through the watch, read the log."""
    backend = cluster.backend()
    launch = _launch(tmp_path)
    lines = Lines()
    attempt = await backend.start(launch, lines)
    assert isinstance(attempt, KubeAttempt)
    job = await cluster.job_created(job_name(launch.job_id, 1))
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 91
    assert job["metadata"]["namespace"] == NS

    digest = "sha256:" + "5e" * 32  # the kubelet's imageID: the tag resolved when the container was made
    await cluster.run_pod(
        job, 0, b"epoch 1\nepoch 2\nno newline at the end", exit_code=0, image_id=f"{IMAGE}@{digest}"
    )
    await cluster.set_job_condition(attempt.name, "Complete", "")
    outcome = await _wait(attempt)

    assert (outcome.kind, outcome.exit_code, outcome.reason) == ("succeeded", 0, "exit code 0")
    assert outcome.runtime is not None and outcome.runtime.image_digest == digest  # lineage: what ran
    assert lines.lines == ["epoch 1", "epoch 2", "no newline at the end"]
    follow = cluster.requests("GET", "/log")
    assert follow and "follow=true" in str(follow[0].url) and "container=job" in str(follow[0].url)
    await attempt.release()
    assert cluster.jobs() == {}  # the outcome is recorded: the Job goes


@pytest.mark.parametrize(
    ("condition", "exit_code", "reason", "kind", "expect"),
    [
        ("BackoffLimitExceeded", 3, "Error", "failed", "exit code 3"),
        (
            "BackoffLimitExceeded",
            137,
            "OOMKilled",
            "failed",
            "killed: out of memory (limit 2048 MiB), exit code 137",
        ),
        ("DeadlineExceeded", 143, "Error", "timed_out", "timed out after 90.5s"),
    ],
)
async def test_failed_conditions_map_to_failed_and_timed_out(
    cluster: Cluster, tmp_path: Path, condition: str, exit_code: int, reason: str, kind: str, expect: str
) -> None:
    """Client side only, against kmock: a Failed Job's reason and its pod's exit give the outcome."""
    backend = cluster.backend()
    attempt = await backend.start(_launch(tmp_path), Lines())
    assert isinstance(attempt, KubeAttempt)
    job = await cluster.job_created(attempt.name)
    await cluster.run_pod(job, 0, b"", exit_code=exit_code, reason=reason)
    await cluster.set_job_condition(attempt.name, "Failed", condition)
    outcome = await _wait(attempt)
    assert (outcome.kind, outcome.exit_code, outcome.reason) == (kind, exit_code, expect)


async def test_a_timeout_the_cluster_missed_is_enforced_by_deleting_the_job(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Client side only, against kmock (no controller enforces activeDeadlineSeconds there): past
    timeout + grace + slack the executor deletes the Job itself and reports timed_out."""
    backend = cluster.backend(deadline_slack_s=0.0)
    attempt = await backend.start(_launch(tmp_path, timeout_s=0.2, grace_s=0.0), Lines())
    assert isinstance(attempt, KubeAttempt)
    job = await cluster.job_created(attempt.name)
    await cluster.run_pod(job, 0, b"still training\n")  # running, never ends
    outcome = await _wait(attempt)
    assert (outcome.kind, outcome.reason) == ("timed_out", "timed out after 0.2s")
    (delete,) = cluster.requests("DELETE", f"/jobs/{attempt.name}")
    assert "propagationPolicy=Foreground" in str(delete.url)
    assert cluster.jobs() == {}


async def test_cancel_deletes_the_job_with_the_grace_and_reports_cancelled(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Client side only, against kmock: cancel = delete with propagation Foreground and the grace
    as gracePeriodSeconds (the pods' terminationGracePeriodSeconds is the same grace)."""
    backend = cluster.backend()
    lines = Lines()
    attempt = await backend.start(_launch(tmp_path, grace_s=7.0), lines)
    assert isinstance(attempt, KubeAttempt)
    job = await cluster.job_created(attempt.name)
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 7
    await cluster.run_pod(job, 0, b"step 1\n")
    await cluster.until(lambda: lines.lines)
    await attempt.cancel(3.0)
    outcome = await _wait(attempt)
    assert outcome.kind == "cancelled"
    (delete,) = cluster.requests("DELETE", f"/jobs/{attempt.name}")
    assert "propagationPolicy=Foreground" in str(delete.url) and "gracePeriodSeconds=3" in str(delete.url)
    assert cluster.jobs() == {}


async def test_a_pod_that_cannot_pull_its_image_fails_the_attempt_at_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Client side only, against kmock: ImagePullBackOff would otherwise wait for the deadline."""
    backend = cluster.backend()
    attempt = await backend.start(_launch(tmp_path), Lines())
    assert isinstance(attempt, KubeAttempt)
    job = await cluster.job_created(attempt.name)
    await cluster.run_pod(job, 0, b"", waiting="ImagePullBackOff")
    outcome = await _wait(attempt)
    assert outcome.kind == "failed" and outcome.exit_code is None
    assert outcome.reason == "could not start: job: ImagePullBackOff: pull access denied"
    assert cluster.jobs() == {}


async def test_gang_creates_indexed_job_and_service_and_tags_each_rank(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Client side only, against kmock: two ranks' pods (as the Job controller would make them),
    rank 1 fails: the attempt fails with rank 1's exit code; lines carry their rank."""
    backend = cluster.backend()
    lines = Lines()
    attempt = await backend.start(_launch(tmp_path, gang=_gang(2)), lines)
    assert isinstance(attempt, KubeAttempt)
    job = await cluster.job_created(attempt.name)
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2
    assert cluster.services() == [attempt.name]
    await cluster.run_pod(job, 0, b"hello from 0\n", exit_code=0)
    await cluster.run_pod(job, 1, b"hello from 1\n", exit_code=1)
    await cluster.set_job_condition(attempt.name, "Failed", "BackoffLimitExceeded")
    outcome = await _wait(attempt)
    assert (outcome.kind, outcome.exit_code, outcome.reason) == ("failed", 1, "rank 1 exit code 1")
    assert sorted(lines.lines) == ["[rank 0] hello from 0", "[rank 1] hello from 1"]
    await attempt.release()
    assert cluster.jobs() == {} and cluster.services() == []


@pytest.mark.security
async def test_a_gangs_ranks_are_reachable_from_their_own_gang_only(cluster: Cluster, tmp_path: Path) -> None:
    """Client side only, against kmock (no controller enforces NetworkPolicy there): a gang's Job
    comes with a NetworkPolicy that selects this attempt's pods and admits ingress from them alone,
    and it is deleted with the attempt. Before, one namespace-wide policy let every job pod reach
    every other (another team's ranks included)."""
    backend = cluster.backend()
    attempt = await backend.start(_launch(tmp_path, gang=_gang(2)), Lines())
    assert isinstance(attempt, KubeAttempt)
    job = await cluster.job_created(attempt.name)
    policy = (await cluster.until(cluster.network_policies))[attempt.name]
    selector = {LABEL_JOB: "0abc123def456xyz", LABEL_ATTEMPT: "1"}
    assert policy["spec"] == {
        "podSelector": {"matchLabels": selector},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": selector}}]}],
    }
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    await attempt.cancel(0)
    await _wait(attempt)
    await attempt.release()
    assert cluster.network_policies() == {}


async def test_a_gang_split_across_executors_fails_without_creating_anything(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Client side only, against kmock: nothing is created for a gang this executor cannot run."""
    backend = cluster.backend()
    split = Gang(master_addr="10.0.0.1", master_port=29500, world_size=2, ranks=(1,))
    attempt = await backend.start(_launch(tmp_path, gang=split), Lines())
    outcome = await _wait(attempt)
    assert outcome.kind == "failed" and "whole gang" in outcome.reason
    assert cluster.requests("POST", "/jobs") == []


async def test_a_second_start_of_the_same_attempt_attaches_instead_of_doubling(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Client side only, against kmock: create answers 409, the backend attaches to that Job."""
    backend = cluster.backend()
    launch = _launch(tmp_path)
    first = await backend.start(launch, Lines())
    second = await backend.start(launch, Lines())
    assert isinstance(first, KubeAttempt) and isinstance(second, KubeAttempt)
    assert second.name == first.name and len(cluster.jobs()) == 1
    assert len(cluster.requests("POST", "/jobs")) == 2
    job = await cluster.job_created(first.name)
    await cluster.run_pod(job, 0, b"", exit_code=0)
    await cluster.set_job_condition(first.name, "Complete", "")
    assert (await _wait(second)).kind == "succeeded"
    assert (await _wait(first)).kind == "succeeded"


async def test_after_a_restart_the_current_attempt_is_adopted_and_a_stale_one_deleted(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Client side only, against kmock: a new backend (a restarted executor) lists its Jobs by
    label, adopts one (its log continues after what was already handed on) and discards another."""
    old = cluster.backend()
    current, stale = _launch(tmp_path, attempt=2), _launch(tmp_path, job_id="0zzz999stale0001")
    handle = await old.start(current, Lines())
    stale_handle = await old.start(stale, Lines())
    assert isinstance(handle, KubeAttempt) and isinstance(stale_handle, KubeAttempt)
    job = await cluster.job_created(handle.name)
    await cluster.run_pod(job, 0, b"before the restart\nafter the restart\n")
    await cluster.until(lambda: handle._consumed)
    await handle.detach()
    await stale_handle.detach()
    # as if the previous executor had shipped the first line only, then died
    handle._write_cursor({f"{handle.name}-0-x7k2p": len(b"before the restart\n")})

    new = cluster.backend()
    found = {f.job_id: f for f in await new.find_attempts()}
    assert set(found) == {current.job_id, stale.job_id}
    assert found[current.job_id].attempt == 2 and found[current.job_id].ref == handle.name
    await new.discard(found[stale.job_id], 5.0)
    assert set(cluster.jobs()) == {handle.name}

    lines = Lines()
    adopted = await new.adopt(found[current.job_id], lines)
    assert adopted.launch.timeout_s == 90.5 and adopted.launch.workdir == current.workdir
    await cluster.set_job_condition(handle.name, "Complete", "")
    outcome = await _wait(adopted)
    assert outcome.kind == "succeeded"
    assert lines.lines == ["after the restart"]


async def test_only_this_executors_jobs_are_found(cluster: Cluster, tmp_path: Path) -> None:
    """Client side only, against kmock (which ignores label selectors: the backend filters too)."""
    mine = cluster.backend()
    other = KubernetesBackend(
        mine._factory, KubeOptions(namespace=NS, executor_id="someone-else"), Resources(1.0, 1, 0)
    )
    attempts = [
        await mine.start(_launch(tmp_path), Lines()),
        await other.start(_launch(tmp_path, job_id="0other0000000001"), Lines()),
    ]
    assert len(cluster.jobs()) == 2
    assert [f.job_id for f in await mine.find_attempts()] == ["0abc123def456xyz"]
    for attempt in attempts:
        assert isinstance(attempt, KubeAttempt)
        await attempt.detach()


@pytest.mark.unit
def test_selected_by_settings_with_the_pools_quota_as_capacity(tmp_path: Path) -> None:
    settings = ExecutorSettings(
        backend="kubernetes", id="kube-pool-a", cpu=32, memory=131072, gpu=4, kube_namespace="ml"
    )
    backend = make_backend(settings, tmp_path)  # no API call yet: the client is made on first use
    assert isinstance(backend, KubernetesBackend)
    assert backend.capacity() == Resources(cpu=32.0, memory_mb=131072, gpu=4)
    assert backend.options.namespace == "ml" and backend.options.executor_id == "kube-pool-a"
    with pytest.raises(ValueError, match="TRAINYARD_EXECUTOR_CPU"):
        make_backend(ExecutorSettings(backend="kubernetes", id="kube-pool-a"), tmp_path)


# -- through the services: scheduler + executor on a real nats-server, the API from kmock ------


def _kube_executor(
    cluster: Cluster, nats_server: Any, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, ExecutorSettings]:
    """The common settings and a kubernetes executor's, which finds kmock through a kubeconfig."""
    from trainyard_shared.testing.helpers import common_settings

    monkeypatch.setenv(
        "KUBECONFIG", str(_kubeconfig(tmp_path / "kubeconfig", str(cluster.mock.url).rstrip("/")))
    )
    monkeypatch.setenv("TRAINYARD_EXECUTOR_BACKEND", "kubernetes")
    settings = ExecutorSettings(
        id="kube-svc", cpu=16, memory=65536, gpu=0, kube_namespace=NS, heartbeat_seconds=0.5, grace_seconds=2
    )
    return common_settings(nats_server.url, prefix, tmp_path / "data"), settings


@pytest.mark.service
async def test_a_job_runs_through_the_services_on_the_kubernetes_backend(
    cluster: Cluster, nats_server: Any, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Client side only, against kmock (the test plays the Job controller and the kubelet): the
    scheduler places the job on a kubernetes executor selected by its settings and found through a
    kubeconfig; the executor creates the Job, ships the pod's log and records the outcome."""
    from trainyard_contracts import JobSpec
    from trainyard_executor.app import create_app as executor_app
    from trainyard_scheduler.testkit import quick_scheduler
    from trainyard_shared.testing.helpers import Bus, running

    common, settings = _kube_executor(cluster, nats_server, prefix, tmp_path, monkeypatch)
    sched = quick_scheduler(common)
    spec = JobSpec(
        name="on-kube", image=IMAGE, command=["python", "train.py"], timeout=600, resources={"cpu": 2}
    )
    async with Bus(nats_server.url, prefix) as bus, running(sched):
        async with running(executor_app(common, settings)):
            job_id = await bus.submit(spec)
            job = await cluster.until(lambda: next(iter(cluster.jobs().values()), None), deadline_s=30)
            assert job["metadata"]["labels"][LABEL_JOB] == job_id
            assert job["metadata"]["labels"][LABEL_EXECUTOR] == "kube-svc"
            assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["python", "train.py"]
            assert job["spec"]["activeDeadlineSeconds"] == 600
            await cluster.run_pod(job, 0, b"loss 0.5\nloss 0.25\n", exit_code=0)
            await cluster.set_job_condition(job["metadata"]["name"], "Complete", "")
            record = await bus.wait_state(job_id, "succeeded", "failed", "timed_out", "cancelled")
            assert record.state.value == "succeeded", record.reason
            assert record.exit_code == 0 and record.attempts[0].executor_id == "kube-svc"
            assert await bus.event_types(job_id) == [
                "submitted",
                "queued",
                "scheduled",
                "running",
                "succeeded",
            ]
            assert {"loss 0.5", "loss 0.25"} <= set(await bus.log_text(job_id))
            await cluster.until(lambda: not cluster.jobs())  # released once the outcome was recorded


def _report(step: int, **values: float) -> bytes:
    """A report as the reporter writes it on the pod's stderr (reporter/trainyard.py)."""
    return MARK + json.dumps({"step": step, "time": 1.0 + step, "values": values}).encode() + b"\n"


@pytest.mark.service
@pytest.mark.insight
async def test_reports_on_the_pods_log_reach_the_metrics_stream_in_order_and_never_the_jobs_log(
    cluster: Cluster, nats_server: Any, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Client side only, against kmock (the test plays the kubelet: the pod's log is served whole,
    with the reporter's marked lines in it as ``trainyard.report`` writes them, including one mid-way
    through a progress bar; a hostile 1 MiB marked line and a forged one). On a real nats-server the
    points arrive on the attempt's metrics stream in order, the job's log has its own lines and no
    marked one, the drops are counted in it, and the pod mounts the reporter from its ConfigMap."""
    from trainyard_contracts import JobSpec
    from trainyard_executor.app import create_app as executor_app
    from trainyard_scheduler.testkit import quick_scheduler
    from trainyard_shared.testing.helpers import Bus, running

    common, settings = _kube_executor(cluster, nats_server, prefix, tmp_path, monkeypatch)
    hostile = MARK + b'{"step": 1, "values": {"x": "' + b"A" * (1024 * 1024) + b'"}}\n'
    log = b"".join(
        [
            b"epoch 0\n",
            *(_report(i, loss=1.0 / (i + 1)) for i in range(5)),
            b"10%|#",  # a progress bar without its newline: the next report comes mid-line
            _report(5, loss=0.1),
            hostile,
            MARK + b"forged\n",
            b"epoch 1\n",
            *(_report(i, loss=0.05) for i in range(6, 10)),
        ]
    )
    spec = JobSpec(name="reports", image=IMAGE, command=["python", "train.py"], resources={"cpu": 1})
    async with Bus(nats_server.url, prefix) as bus, running(quick_scheduler(common)):
        async with running(executor_app(common, settings)):
            job_id = await bus.submit(spec)
            job = await cluster.until(lambda: next(iter(cluster.jobs().values()), None), deadline_s=30)
            pod = job["spec"]["template"]["spec"]
            env = _env(pod["containers"][0])
            assert env["TRAINYARD_METRICS_STREAM"] == "stderr" and env["PYTHONPATH"] == "/trainyard/py"
            (config,) = [o.raw for (r, _n, _k), o in cluster.mock.objects.items() if r.plural == "configmaps"]
            volume = {"name": config["metadata"]["name"], "optional": True, "defaultMode": 0o444}
            assert {"name": "trainyard-py", "configMap": volume} in pod["volumes"]
            await cluster.run_pod(job, 0, log, exit_code=0)
            await cluster.set_job_condition(job["metadata"]["name"], "Complete", "")
            record = await bus.wait_state(job_id, "succeeded", "failed", "timed_out", "cancelled")
            assert record.state.value == "succeeded", record.reason
            batches = await bus.messages(bus.subjects.metrics_of(job_id), bus.subjects.streams.metrics)
            text = await bus.log_text(job_id)
    points = [p for m in batches for p in json.loads(m.data)["points"] if "loss" in p["values"]]
    assert [p["step"] for p in points] == list(range(10))  # in order, none lost
    assert points[0]["values"] == {"loss": 1.0} and points[9]["time"] == 10.0
    assert not [line for line in text if "\x1e" in line or "trainyard.metric" in line]
    # the job's bytes as it wrote them: its open progress bar goes on with its next output
    assert {"epoch 0", "10%|#epoch 1"} <= set(text)
    assert any("2 reported values or lines dropped" in line for line in text), text
