"""A Kubernetes job pod's packed workdir and pipeline inputs: an init container that fetches them.

A ConfigMap or Secret holds at most 1 MiB and lives in etcd: no place for a source tree. So the
pod's first init container, ``fetch``, runs the executor's own image (``python -m
trainyard_executor.fetch``, argv only, no shell): it reads the digests from the Object Store as the
NATS user ``fetcher`` (it may only read the workdirs and step outputs buckets), checks the bytes
against them and unpacks them as hostile input, the workdir into the work volume's ``src`` (the job
container's working dir) and each step's outputs folder into the ``inputs`` volume, which the job
container mounts read-only at ``/trainyard/inputs`` (``TRAINYARD_INPUTS``).

The fetcher's password is in the attempt's Secret (kube_secret, key ``nats-fetch-password``),
referenced by this init container alone: the job container's env and the Job object carry none.
The pod is labelled ``trainyard.dev/fetches-blobs: "true"``: the NATS NetworkPolicy admits such
pods of the jobs namespace (deploy/k8s/base/nats/policy.yaml), no other job pod.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainyard_executor.backends.base import AttemptLaunch
from trainyard_executor.backends.kube_secret import FETCH_PASSWORD_KEY, secret_ref
from trainyard_executor.fetch import (
    PASSWORD_VARIABLE,
    PLAN_VARIABLE,
    USER_VARIABLE,
    FetchLimits,
    FetchPlan,
)
from trainyard_shared.natsusers import FETCHER_USER
from trainyard_shared.settings import CommonSettings

FETCH_CONTAINER = "fetch"
# the runtime patch's owner in a TrainJob (Trainer's runtimePatches are keyed by manager)
PATCH_MANAGER = "trainyard.dev/executor"
FETCH_LABEL = "trainyard.dev/fetches-blobs"
INPUTS_MOUNT = "/trainyard/inputs"
INPUTS_VOLUME = "inputs"


@dataclass(frozen=True)
class FetchOptions:
    """How this executor's pods fetch (from its settings: ``kube_fetch_*``)."""

    image: str
    """The executor's image (it holds ``trainyard_executor.fetch``)."""
    nats_url: str
    """NATS as the job pods reach it (another namespace: ``nats://nats.trainyard:4222``)."""
    prefix: str
    password: str = field(repr=False)
    """The ``fetcher`` user's: only ever in the attempt's Secret, never in a manifest or a log."""
    user: str = FETCHER_USER
    limits: FetchLimits = field(default_factory=FetchLimits)
    timeout_s: float = 600.0


def needs_fetch(launch: AttemptLaunch) -> bool:
    """The attempt runs in a packed workdir or takes steps' outputs folders."""
    return launch.workdir_digest is not None or bool(launch.input_digests)


def fetch_plan(launch: AttemptLaunch, opts: FetchOptions, work_mount: str) -> FetchPlan:
    return FetchPlan(
        nats_url=opts.nats_url,
        prefix=opts.prefix,
        workdir=launch.workdir_digest,
        work_dir=work_mount,
        inputs=tuple(launch.input_digests),
        inputs_dir=INPUTS_MOUNT,
        limits=opts.limits,
        timeout_s=opts.timeout_s,
    )


def fetch_init_container(
    launch: AttemptLaunch,
    opts: FetchOptions,
    security: Mapping[str, Any],
    job_name: str,
    work_mount: str,
    resources: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``fetch`` init container: the only container of the pod that gets the password.
    ``resources``: the job container's (a pod is sized by the larger of its init containers and
    its containers, so this costs nothing more; the archives are held in memory to be checked)."""
    mounts: list[dict[str, Any]] = []
    if launch.workdir_digest is not None:
        mounts.append({"name": "work", "mountPath": work_mount})
    if launch.input_digests:
        mounts.append({"name": INPUTS_VOLUME, "mountPath": INPUTS_MOUNT})
    container: dict[str, Any] = {
        "name": FETCH_CONTAINER,
        "image": opts.image,
        "command": fetch_plan(launch, opts, work_mount).argv(),
        "env": [
            {"name": USER_VARIABLE, "value": opts.user},
            {"name": PASSWORD_VARIABLE, "valueFrom": secret_ref(job_name, FETCH_PASSWORD_KEY)},
        ],
        "securityContext": dict(security),
        "volumeMounts": mounts,
    }
    limits = {k: v for k, v in (resources.get("limits") or {}).items() if k in ("cpu", "memory")}
    if limits:
        container["resources"] = {"requests": dict(limits), "limits": limits}
    return container


def inputs_storage(launch: AttemptLaunch) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The job container's read-only mount of the inputs volume, and the volume (none without
    inputs): the job reads its dependencies' folders and cannot change them."""
    if not launch.input_digests:
        return [], []
    mount = {"name": INPUTS_VOLUME, "mountPath": INPUTS_MOUNT, "readOnly": True}
    return [mount], [{"name": INPUTS_VOLUME, "emptyDir": {}}]


def fetch_options(settings: Any, common: CommonSettings | None = None) -> FetchOptions | None:
    """How pods fetch a packed workdir and steps' outputs (kube_fetch), or None when the image
    or the ``fetcher`` user's password is not set (such an attempt is then refused). ``common``:
    the NATS URL and subject prefix (default: this process's environment, as the executor's)."""
    password = settings.kube_fetch_nats_password
    if not settings.kube_fetch_image or password is None:
        return None
    common = common or CommonSettings()
    return FetchOptions(
        image=settings.kube_fetch_image,
        nats_url=settings.kube_fetch_nats_url or common.nats_url,
        prefix=common.prefix,
        password=password.get_secret_value(),
        user=settings.kube_fetch_nats_user,
        limits=FetchLimits(
            settings.max_workdir_bytes,
            settings.max_workdir_files,
            settings.max_step_outputs_bytes,
            settings.max_step_outputs_files,
            settings.max_step_inputs_bytes,
        ),
    )


def trainjob_fetch_patch(
    launch: AttemptLaunch,
    opts: FetchOptions,
    job_name: str,
    *,
    fetch_container: str,
    trainer_container: str,
) -> dict[str, Any]:
    """A TrainJob's runtime patch (``spec.runtimePatches[]``) that gives its pods the steps'
    outputs folders. The Trainer lets a patch set a container's env and mounts, not its command,
    and only of a container the runtime declares: so the runtime declares the init container
    ``fetch_container`` (the executor's image, ``python -m trainyard_executor.fetch
    --plan-from-env``; docs/kubeflow.md), and this patch hands it the plan in its env, the
    password by reference to the attempt's Secret, and the inputs volume, which the trainer
    container mounts read-only. The patch targets the replicated job named as the trainer
    container (``node`` in Kubeflow's runtimes)."""
    plan = fetch_plan(launch, opts, work_mount="/trainyard/work")
    fetcher = {
        "name": fetch_container,
        "env": [
            {"name": PLAN_VARIABLE, "value": json.dumps(plan.arguments())},
            {"name": USER_VARIABLE, "value": opts.user},
            {"name": PASSWORD_VARIABLE, "valueFrom": secret_ref(job_name, FETCH_PASSWORD_KEY)},
        ],
        "volumeMounts": [{"name": INPUTS_VOLUME, "mountPath": INPUTS_MOUNT}],
    }
    mounts, volumes = inputs_storage(launch)
    pod = {
        "metadata": {"labels": {FETCH_LABEL: "true"}},
        "spec": {
            "volumes": volumes,
            "initContainers": [fetcher],
            "containers": [{"name": trainer_container, "volumeMounts": mounts}],
        },
    }
    replicated = {"name": trainer_container, "template": {"spec": {"template": pod}}}
    return {
        "manager": PATCH_MANAGER,
        "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [replicated]}}},
    }
