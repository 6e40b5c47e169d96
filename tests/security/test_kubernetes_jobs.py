"""Kubernetes: a job pod gets no API credentials, lives apart from Trainyard's Secrets, and reaches
no other job but its own gang's ranks (issue 13).

No API server, admission or network plugin can run here: the manifests are checked as rendered
(deploy/k8s through the kustomize loader the deploy tests use) and as the executor builds them.
What a cluster enforces from them (token mounting, NetworkPolicy) is the cluster's; these tests show
that we ask for it. The per-gang policy's client side is in
services/executor/tests/test_kubernetes_backend.py (against kmock).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy.kustomize import render_python
from tests.deploy.natsconf import ROOT
from trainyard_executor.backends.base import AttemptLaunch, Gang
from trainyard_executor.backends.kube_manifests import (
    LABEL_ATTEMPT,
    LABEL_JOB,
    KubeOptions,
    gang_network_policy,
    job_manifest,
)

pytestmark = [pytest.mark.security, pytest.mark.kubernetes, pytest.mark.unit]

K8S = ROOT / "deploy" / "k8s"
SECRETS_NAMESPACE = "trainyard"


@pytest.fixture(scope="module")
def everything() -> list[dict[str, Any]]:
    return render_python(K8S / "overlays" / "dev")


def _launch(tmp_path: Path, gang: Gang | None = None) -> AttemptLaunch:
    return AttemptLaunch(
        job_id="0abc123def456xyz",
        attempt=1,
        argv=["python", "train.py"],
        env={},
        workdir=tmp_path,
        timeout_s=None,
        image="registry.example/train:1",
        gang=gang,
    )


@pytest.mark.parametrize("ranks", [1, 3])
def test_a_job_pod_mounts_no_service_account_token(tmp_path: Path, ranks: int) -> None:
    """Before: the pod spec said nothing, so the namespace's default service account token was
    mounted into every job (a hostile job could call the API with it)."""
    gang = Gang(master_addr="x", master_port=29500, world_size=ranks, ranks=tuple(range(ranks)))
    opts = KubeOptions(namespace="trainyard-jobs", executor_id="k", service_account="runner")
    manifest = job_manifest(
        _launch(tmp_path, gang if ranks > 1 else None), opts, frozenset(), output_dir="/o", started_at=0
    )
    assert manifest["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_a_gang_policy_admits_its_own_ranks_only(tmp_path: Path) -> None:
    gang = Gang(master_addr="x", master_port=29500, world_size=2, ranks=(0, 1))
    opts = KubeOptions(namespace="trainyard-jobs", executor_id="k")
    job = job_manifest(_launch(tmp_path, gang), opts, frozenset(), output_dir="/o", started_at=0)
    policy = gang_network_policy(job, opts, owner_uid="uid-1")
    own = {LABEL_JOB: "0abc123def456xyz", LABEL_ATTEMPT: "1"}
    assert policy["spec"]["podSelector"] == {"matchLabels": own}
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": own}}]}]
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_jobs_run_in_a_namespace_without_secrets_or_services(everything: list[dict[str, Any]]) -> None:
    """Before: the executor ran Jobs in its own namespace, beside the NATS and API Secrets."""
    (executor,) = [o for o in everything if o["kind"] == "Deployment" and o["metadata"]["name"] == "executor"]
    env = {e["name"]: e for e in executor["spec"]["template"]["spec"]["containers"][0]["env"]}
    jobs_namespace = env["TRAINYARD_EXECUTOR_KUBE_NAMESPACE"].get("value")
    assert jobs_namespace and jobs_namespace != SECRETS_NAMESPACE
    in_jobs = [o for o in everything if o["metadata"].get("namespace") == jobs_namespace]
    assert {o["kind"] for o in in_jobs} <= {"NetworkPolicy", "Role", "RoleBinding"}
    (namespace,) = [
        o for o in everything if o["kind"] == "Namespace" and o["metadata"]["name"] == jobs_namespace
    ]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    # the executor may act in the jobs' namespace only
    for role in (o for o in everything if o["kind"] in ("Role", "RoleBinding")):
        assert role["metadata"]["namespace"] == jobs_namespace


def test_no_policy_lets_every_job_reach_every_other(everything: list[dict[str, Any]]) -> None:
    """Before: a `job-gangs` policy admitted ingress to any job pod from any job pod (a label that
    merely Exists), so one team's job could reach another team's ranks."""
    policies = [o for o in everything if o["kind"] == "NetworkPolicy"]
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                expressions = (peer.get("podSelector") or {}).get("matchExpressions", [])
                assert not any(e["key"] == LABEL_JOB and e["operator"] == "Exists" for e in expressions), (
                    policy["metadata"]["name"]
                )
    (deny,) = [
        p
        for p in policies
        if p["metadata"]["namespace"] != SECRETS_NAMESPACE and p["metadata"]["name"] == "default-deny-ingress"
    ]
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}


FETCHING_PODS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "trainyard-jobs"}},
    "podSelector": {"matchLabels": {"trainyard.dev/fetches-blobs": "true"}},
}


def test_nats_admits_from_the_jobs_namespace_only_the_pods_that_fetch_blobs(
    everything: list[dict[str, Any]],
) -> None:
    """A podSelector without a namespaceSelector matches pods of the policy's own namespace only.
    The client port is opened to one other namespace's pods, and only in one peer that ANDs both
    selectors: the jobs' pods the executor labels because their init container fetches a workdir
    or a step's inputs as the read-only user ``fetcher`` (docs/executors.md). A namespaceSelector
    alone, or the two in separate peers, would open it to every job pod."""
    (nats,) = [o for o in everything if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "nats"]
    across = [
        peer
        for rule in nats["spec"]["ingress"]
        if any(p["port"] == 4222 for p in rule["ports"])
        for peer in rule["from"]
        if "namespaceSelector" in peer
    ]
    assert across == [FETCHING_PODS]
