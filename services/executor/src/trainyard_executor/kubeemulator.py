"""The Kubernetes emulator the cluster backends' tests use, with a stand-in Kubeflow Trainer
(test kit, imported by test modules; needs the dev dependency ``kmock``).

No kube-apiserver can run on this machine (/work/shared/ENVIRONMENT.md). ``kmock``'s
KubernetesEmulator is an in-memory HTTP emulation of the API that the official client talks to for
real (create, get, list, watch, patch, delete of any resource, custom ones included); it has no
controllers, admission, validation or label-selector filtering.

:class:`TrainerStandIn` is a small controller added to it: **a stand-in, not the Kubeflow
Trainer**. It plays the Trainer, JobSet and the kubelet together, through the same HTTP API the
backend uses: a TrainJob that is not suspended gets one pod per node (labelled with
``jobset.sigs.k8s.io/jobset-name`` and the completion index, its ``node`` container in the state a
script gives, its log served), then the ``Complete`` or ``Failed`` condition the pods' exits call
for; ``activeDeadlineSeconds`` fails it with ``DeadlineExceeded``; a suspended one gets
``Suspended``; deleting a TrainJob deletes its pods. What a real Trainer does beyond that
(runtimes, JobSet's restarts and success policy, PET_* rendezvous variables) is not emulated.

:func:`put_pod_metrics` is **a stand-in for metrics-server**: it stores a pod's PodMetrics
(``metrics.k8s.io/v1beta1``, the object metrics-server answers with, usage per container as
quantity strings, a timestamp and a window) in the emulator, which then serves it on the same path
as the real aggregated API. No scraping, no kubelet: the test says what the pods use and when.
Without it the emulator answers 404 for a pod's metrics, as a cluster without metrics-server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
from kubernetes import client as k8s

from trainyard_executor.backends.base import AttemptLaunch, Gang, Resources
from trainyard_executor.backends.kube_manifests import COMPLETION_INDEX_ANNOT
from trainyard_executor.backends.kube_trainjob import JOBSET_NAME_LABEL, TRAINER_GROUP, TRAINER_VERSION

TRAINJOBS_RESOURCE = f"{TRAINER_GROUP}/{TRAINER_VERSION}/trainjobs"
METRICS_RESOURCE = "metrics.k8s.io/v1beta1/pods"
BUILTIN_RESOURCES = ("batch/v1/jobs", "v1/pods", "v1/services", "networking.k8s.io/v1/networkpolicies")
TICK_S = 0.02
SAMPLE_IMAGE = "registry.example/train:1"


def sample_launch(
    tmp_path: Path, job_id: str = "0abc123def456xyz", attempt: int = 1, **kw: Any
) -> AttemptLaunch:
    """An attempt as the executor core hands it to a cluster backend; ``kw`` replaces fields."""
    base: dict[str, Any] = {
        "job_id": job_id,
        "attempt": attempt,
        "argv": ["python", "train.py", "--epochs", "3"],
        "env": {"PATH": "/executor/venv/bin:/usr/bin", "LR": "0.1", "TRAINYARD_JOB_ID": job_id},
        "workdir": tmp_path / job_id / f"attempt-{attempt}",
        "timeout_s": 90.5,
        "grace_s": 7.0,
        "image": SAMPLE_IMAGE,
        "cpu": 1.5,
        "memory_mb": 2048,
        "gpu": 2,
        "inherited_env": ("PATH",),
    }
    base.update(kw)
    return AttemptLaunch(**base)


def backend_on(mock: Any, kind: Any, options: Any, **kw: Any) -> Any:
    """A cluster backend of ``kind`` (KubernetesBackend, KubeflowBackend) talking to ``mock``, with
    a large pool and short watch restarts."""
    url = str(mock.url).rstrip("/")
    kw.setdefault("watch_idle_s", 2.0)
    return kind(
        lambda: k8s.ApiClient(k8s.Configuration(host=url)),
        options,
        Resources(cpu=64.0, memory_mb=262144, gpu=8),
        **kw,
    )


def whole_gang(n: int) -> Gang:
    """Every rank of an n-rank gang on this executor."""
    return Gang(master_addr="127.0.0.1", master_port=12345, world_size=n, ranks=tuple(range(n)))


class Lines:
    """A line sink that keeps what it is given."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    async def __call__(self, stream: str, line: str) -> None:
        self.lines.append(line)


def write_kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig naming the emulator: the executor finds its cluster as a deployment would."""
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: kmock\n"
        f"clusters:\n- name: kmock\n  cluster:\n    server: {server}\n"
        "users:\n- name: tester\n  user: {}\n"
        "contexts:\n- name: kmock\n  context:\n    cluster: kmock\n    user: tester\n"
    )
    return path


@dataclass(frozen=True)
class NodeRun:
    """What one node's trainer container does in the stand-in."""

    exit_code: int | None = 0
    """None: it keeps running."""
    log: bytes = b""
    reason: str = ""
    """The terminated container's reason (default Completed / Error); OOMKilled, ..."""
    image_id: str = ""
    """The container status's imageID as a kubelet sets it (``repo@sha256:...``); empty: unknown."""


@dataclass(frozen=True)
class TrainJobFails:
    """The Trainer refuses the TrainJob itself (no pods): a Failed condition with this reason."""

    reason: str
    message: str = ""


Script = Callable[[dict[str, Any]], "list[NodeRun] | TrainJobFails"]


def pod_object(
    name: str,
    namespace: str,
    rank: int,
    *,
    container: str,
    image: str,
    labels: dict[str, str],
    run: NodeRun,
) -> dict[str, Any]:
    """A pod as a kubelet reports it (every field the client's V1ContainerStatus requires)."""
    state: dict[str, Any] = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    if run.exit_code is not None:
        reason = run.reason or ("Completed" if run.exit_code == 0 else "Error")
        state = {"terminated": {"exitCode": run.exit_code, "reason": reason}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {COMPLETION_INDEX_ANNOT: str(rank)},
        },
        "spec": {"containers": [{"name": container, "image": image}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": container,
                    "image": image,
                    "imageID": run.image_id,
                    "ready": False,
                    "restartCount": 0,
                    "state": state,
                }
            ],
        },
    }


@dataclass
class TrainerStandIn:
    """Turns TrainJobs into pods and conditions, as described in the module's docstring."""

    mock: Any
    namespace: str
    script: Script
    container: str = "node"
    started: dict[str, float] = field(default_factory=dict)
    """TrainJob name -> when its pods were made (resumed)."""
    ended: set[str] = field(default_factory=set)
    suspended_seen: set[str] = field(default_factory=set)
    pods_of: dict[str, list[str]] = field(default_factory=dict)

    def trainjobs(self) -> dict[str, dict[str, Any]]:
        return {
            name: obj.raw
            for (resource, _ns, name), obj in list(self.mock.objects.items())
            if resource.plural == "trainjobs" and not obj.deleted
        }

    async def run(self) -> None:
        """The controller's loop (until cancelled): look at every TrainJob, act on what changed."""
        while True:
            live = self.trainjobs()
            for name, trainjob in live.items():
                await self._reconcile(name, trainjob)
            for name in [n for n in self.pods_of if n not in live]:
                await self._delete_pods(name)  # the garbage collector: owned pods go with the owner
            await asyncio.sleep(TICK_S)

    async def _reconcile(self, name: str, trainjob: dict[str, Any]) -> None:
        spec = trainjob.get("spec") or {}
        if name in self.ended:
            return
        if spec.get("suspend"):
            if name not in self.suspended_seen:
                self.suspended_seen.add(name)
                await self._condition(name, "Suspended", "Suspended", "TrainJob is suspended")
            return
        if name not in self.started:
            self.started[name] = time.monotonic()
            plan = self.script(trainjob)
            if isinstance(plan, TrainJobFails):
                await self._end(name, "Failed", plan.reason, plan.message)
                return
            await self._make_pods(name, trainjob, plan)
            if all(run.exit_code is not None for run in plan):
                failed = [i for i, run in enumerate(plan) if run.exit_code != 0]
                if failed:
                    await self._end(name, "Failed", "FailedJobs", f"node {failed[0]} failed")
                else:
                    await self._end(name, "Complete", "JobsCompleted", "")
            return
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is not None and time.monotonic() - self.started[name] > float(deadline):
            await self._end(name, "Failed", "DeadlineExceeded", "TrainJob exceeded its deadline")

    async def _make_pods(self, name: str, trainjob: dict[str, Any], plan: list[NodeRun]) -> None:
        image = ((trainjob.get("spec") or {}).get("trainer") or {}).get("image", "")
        self.pods_of[name] = []
        for rank, run in enumerate(plan):
            pod = f"{name}-node-0-{rank}-x7k2p"
            self.mock[kmock.resource("v1/pods"), kmock.name(pod), kmock.subresource("log")] << run.log
            body = pod_object(
                pod,
                self.namespace,
                rank,
                container=self.container,
                image=image,
                labels={JOBSET_NAME_LABEL: name},
                run=run,
            )
            resp = await self.mock.post(f"/api/v1/namespaces/{self.namespace}/pods", json=body)
            assert resp.status == 200, await resp.text()
            self.pods_of[name].append(pod)

    async def _delete_pods(self, name: str) -> None:
        for pod in self.pods_of.pop(name, []):
            await self.mock.delete(f"/api/v1/namespaces/{self.namespace}/pods/{pod}")

    async def _condition(self, name: str, type_: str, reason: str, message: str) -> None:
        body = {
            "status": {
                "conditions": [{"type": type_, "status": "True", "reason": reason, "message": message}]
            }
        }
        path = f"/apis/{TRAINER_GROUP}/{TRAINER_VERSION}/namespaces/{self.namespace}/trainjobs/{name}/status"
        resp = await self.mock.patch(path, json=body)
        assert resp.status == 200, await resp.text()

    async def _end(self, name: str, type_: str, reason: str, message: str) -> None:
        self.ended.add(name)
        await self._condition(name, type_, reason, message)


@contextlib.asynccontextmanager
async def emulator(*resources: str) -> AsyncIterator[Any]:
    """kmock's emulator served on a free loopback port, knowing the built-in kinds and ``resources``
    (a real API lists an empty kind as []; the emulator only knows kinds declared or seen)."""
    async with kmock.KubernetesEmulator() as mock, kmock.Server(mock):
        for resource in (*BUILTIN_RESOURCES, *resources):
            mock.resources[resource] = {}  # type: ignore[assignment]  # (kmock accepts a plain dict)
        yield mock


@contextlib.asynccontextmanager
async def trainer_stand_in(mock: Any, namespace: str, script: Script) -> AsyncIterator[TrainerStandIn]:
    """The stand-in Trainer running against ``mock`` for the block."""
    controller = TrainerStandIn(mock, namespace, script)
    task = asyncio.create_task(controller.run())
    try:
        yield controller
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def pod_metrics_object(
    name: str, namespace: str, usage: dict[str, tuple[str, str]], timestamp: str, window: str = "15s"
) -> dict[str, Any]:
    """A PodMetrics object as metrics-server answers it; ``usage``: container -> (cpu, memory)."""
    return {
        "apiVersion": "metrics.k8s.io/v1beta1",
        "kind": "PodMetrics",
        "metadata": {"name": name, "namespace": namespace},
        "timestamp": timestamp,
        "window": window,
        "containers": [{"name": c, "usage": {"cpu": cpu, "memory": mem}} for c, (cpu, mem) in usage.items()],
    }


async def put_pod_metrics(
    mock: Any,
    namespace: str,
    pod: str,
    usage: dict[str, tuple[str, str]],
    timestamp: str,
    window: str = "15s",
) -> None:
    """The stand-in metrics-server's scrape of ``pod`` (see the module's docstring): its PodMetrics
    made or replaced."""
    body = pod_metrics_object(pod, namespace, usage, timestamp, window)
    path = f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods"
    resp = await mock.post(path, json=body)
    if resp.status == 409:
        resp = await mock.patch(f"{path}/{pod}", json=body)  # (the emulator has no PUT)
    assert resp.status == 200, await resp.text()
