"""The Kubernetes objects of one attempt, as plain API dicts (pure: no cluster, no client).

One attempt is one ``batch/v1`` Job. A gang (``replicas > 1``) is an Indexed Job (one pod per
rank, ``completions = parallelism = replicas``) plus a headless Service, so every rank finds rank 0
at ``<job>-0.<service>``: the Job controller names an indexed pod's host ``<job>-<index>`` and the
pod template's ``subdomain`` puts it under the Service.

Retries, timeouts and cancellation are Trainyard's: ``backoffLimit: 0``, ``restartPolicy: Never``,
``activeDeadlineSeconds`` from the job's timeout, ``terminationGracePeriodSeconds`` from the grace.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainyard_executor.backends.base import AttemptLaunch
from trainyard_executor.backends.kube_fetch import (
    FETCH_LABEL,
    INPUTS_MOUNT,
    FetchOptions,
    fetch_init_container,
    inputs_storage,
    needs_fetch,
)
from trainyard_executor.backends.kube_reporter import reporter_env, reporter_volume
from trainyard_executor.backends.kube_secret import env_entries
from trainyard_executor.backends.kube_source import (
    GitFetch,
    checkout_init_container,
    git_init_container,
    unchecked_fetch,
)

GROUP = "trainyard.dev"
LABEL_JOB = f"{GROUP}/job-id"
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_EXECUTOR = f"{GROUP}/executor"
LABEL_GANG = f"{GROUP}/gang"
# annotations: what an executor needs to adopt the Job after a restart (labels are too short)
ANNOT_JOB = f"{GROUP}/job-id"
ANNOT_TIMEOUT = f"{GROUP}/timeout-seconds"
ANNOT_GRACE = f"{GROUP}/grace-seconds"
ANNOT_OUTPUT_DIR = f"{GROUP}/output-dir"
ANNOT_WORKDIR = f"{GROUP}/workdir"
ANNOT_STARTED = f"{GROUP}/started-at"
ANNOT_WORLD = f"{GROUP}/world-size"
# set by the Job controller on every pod of an Indexed Job
COMPLETION_INDEX_ANNOT = "batch.kubernetes.io/job-completion-index"

CONTAINER = "job"
WORK_MOUNT = "/trainyard/work"
OUTPUTS_MOUNT = "/trainyard/outputs"
CHECKPOINTS_MOUNT = "/trainyard/checkpoints"
DEFAULT_MASTER_PORT = 29500
# a Job's name is the prefix of its pods' host names (<job>-<index>, a 63-character DNS label)
MAX_JOB_NAME = 52
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class KubeOptions:
    """How this executor's Jobs look (from the executor's settings)."""

    namespace: str = "default"
    executor_id: str = ""
    default_image: str | None = None
    ttl_seconds: int | None = 3600
    """``ttlSecondsAfterFinished``: the cluster removes a finished Job the executor did not."""
    run_as_user: int | None = 1000
    """Non-root uid (and gid, fsGroup) of every pod; None: the image's own user."""
    outputs_claim: str | None = None
    """A PersistentVolumeClaim for outputs and checkpoints; None: an emptyDir (outputs are lost)."""
    git_image: str = "alpine/git:2.45.2"
    """Image of the init container that checks out a job's git source."""
    service_account: str | None = None
    automount_token: bool = False
    """Mount the pod's service account token. Off: a job is hostile and gets no API credentials."""
    master_port: int = DEFAULT_MASTER_PORT
    image_pull_secret: str | None = None
    fetch: FetchOptions | None = None
    """How a pod fetches its packed workdir and steps' outputs (kube_fetch); None: such an attempt
    is refused."""


class GangSplitError(ValueError):
    """The scheduler split a gang across executors; a Kubernetes executor runs a whole gang."""


def _digest(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def job_name(job_id: str, attempt: int) -> str:
    """``ty-<job id>-<attempt>``: a DNS-1035 label (so also the Service's name), at most 52 chars.

    A job id that does not fit is cut and a digest of the whole id appended (still unique).
    """
    base = _NOT_DNS.sub("-", job_id.lower()).strip("-") or "job"
    suffix = f"-{attempt}"
    room = MAX_JOB_NAME - len("ty-") - len(suffix)
    if len(base) > room or base != job_id:
        base = f"{base[: room - 9].rstrip('-')}-{_digest(job_id)}"
    return f"ty-{base}{suffix}"


def label_value(value: str) -> str:
    """A valid label value (63 chars, alphanumeric at both ends); the full value is annotated."""
    if len(value) <= 63 and _LABEL_VALUE.match(value):
        return value
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[:54].strip("-_.")
    return f"{cleaned}-{_digest(value)}" if cleaned else _digest(value)


def attempt_labels(job_id: str, attempt: int, executor_id: str) -> dict[str, str]:
    return {
        LABEL_JOB: label_value(job_id),
        LABEL_ATTEMPT: str(attempt),
        LABEL_EXECUTOR: label_value(executor_id),
    }


def attempt_selector(job_id: str, attempt: int) -> str:
    return f"{LABEL_JOB}={label_value(job_id)},{LABEL_ATTEMPT}={attempt}"


def executor_selector(executor_id: str) -> str:
    return f"{LABEL_EXECUTOR}={label_value(executor_id)}"


def cpu_quantity(cpu: float) -> str:
    return f"{max(1, round(cpu * 1000))}m"


def resources(launch: AttemptLaunch) -> dict[str, dict[str, str]]:
    """Requests equal limits (the pod is sized as the scheduler placed it)."""
    limits: dict[str, str] = {}
    if launch.cpu:
        limits["cpu"] = cpu_quantity(launch.cpu)
    if launch.memory_mb:
        limits["memory"] = f"{launch.memory_mb}Mi"
    if launch.gpu:
        limits["nvidia.com/gpu"] = str(launch.gpu)
    return {"requests": dict(limits), "limits": limits} if limits else {}


def container_env(
    launch: AttemptLaunch, host_only: frozenset[str], workdir: str, checkpoints: bool
) -> dict[str, str]:
    """The job's env in the pod: what names the executor's host (PATH, HOME, ...) stays behind,
    as in the docker backend; the paths are the pod's own."""
    env = {k: v for k, v in launch.env.items() if not (k in host_only and k in launch.inherited_env)}
    env["TRAINYARD_OUTPUT_DIR"] = OUTPUTS_MOUNT
    env["TRAINYARD_WORKDIR"] = workdir
    if launch.input_digests:  # the inputs volume, read-only (kube_fetch)
        env["TRAINYARD_INPUTS"] = INPUTS_MOUNT
    else:
        env.pop("TRAINYARD_INPUTS", None)
    if checkpoints:
        env["TRAINYARD_CHECKPOINT_DIR"] = CHECKPOINTS_MOUNT
    else:
        env.pop("TRAINYARD_CHECKPOINT_DIR", None)
    return env


def check_gang(launch: AttemptLaunch) -> int:
    """How many ranks the Job runs (1: no gang). Raises :class:`GangSplitError` for a subset."""
    gang = launch.gang
    if gang is None:
        return 1
    if tuple(gang.ranks) != tuple(range(gang.world_size)):
        raise GangSplitError(
            f"this Kubernetes executor runs a whole gang as one Indexed Job, but was given ranks "
            f"{list(gang.ranks)} of {gang.world_size}; place gangs on one Kubernetes executor"
        )
    return gang.world_size


def _index_ref(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOT}']"}},
    }


def gang_env(name: str, world_size: int, port: int) -> list[dict[str, Any]]:
    """torchrun's variables for one rank per pod: the rank is the pod's completion index."""
    fixed = {
        "MASTER_ADDR": f"{name}-0.{name}",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "GROUP_WORLD_SIZE": str(world_size),
        "ROLE_WORLD_SIZE": str(world_size),
    }
    ranked = [_index_ref(n) for n in ("RANK", "GROUP_RANK", "ROLE_RANK", "TRAINYARD_RANK")]
    return [{"name": k, "value": v} for k, v in fixed.items()] + ranked


def _security(opts: KubeOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    pod: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if opts.run_as_user is not None:
        pod.update(
            runAsNonRoot=True,
            runAsUser=opts.run_as_user,
            runAsGroup=opts.run_as_user,
            fsGroup=opts.run_as_user,
        )
    container = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    return pod, container


def _storage(launch: AttemptLaunch, claim: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pod's mounts and volumes: the work dir, the reporter (read-only), a step's inputs
    (read-only), and outputs (with checkpoints) on the claim."""
    reporter_mount, reporter = reporter_volume()
    inputs_mounts, inputs_volumes = inputs_storage(launch)
    mounts: list[dict[str, Any]] = [{"name": "work", "mountPath": WORK_MOUNT}, reporter_mount, *inputs_mounts]
    volumes: list[dict[str, Any]] = [{"name": "work", "emptyDir": {}}, reporter, *inputs_volumes]
    if claim:
        attempt_dir = f"outputs/{launch.job_id}/attempt-{launch.attempt}"
        mounts += [
            {"name": "shared", "mountPath": OUTPUTS_MOUNT, "subPath": attempt_dir},
            {"name": "shared", "mountPath": CHECKPOINTS_MOUNT, "subPath": f"checkpoints/{launch.job_id}"},
        ]
        volumes.append({"name": "shared", "persistentVolumeClaim": {"claimName": claim}})
    else:
        mounts.append({"name": "outputs", "mountPath": OUTPUTS_MOUNT})
        volumes.append({"name": "outputs", "emptyDir": {}})
    return mounts, volumes


def attempt_annotations(
    launch: AttemptLaunch, output_dir: str, started_at: float, replicas: int
) -> dict[str, str]:
    """What an executor that restarted needs to adopt the Job again."""
    annotations = {
        ANNOT_JOB: launch.job_id,
        ANNOT_GRACE: f"{launch.grace_s:g}",
        ANNOT_OUTPUT_DIR: output_dir,
        ANNOT_WORKDIR: str(launch.workdir),
        ANNOT_STARTED: f"{started_at:.3f}",
        ANNOT_WORLD: str(replicas),
    }
    if launch.timeout_s is not None:
        annotations[ANNOT_TIMEOUT] = f"{launch.timeout_s:g}"
    return annotations


def _job_container(
    launch: AttemptLaunch,
    image: str,
    env: list[dict[str, str]],
    security: dict[str, Any],
    mounts: list[dict[str, Any]],
    workdir: str,
) -> dict[str, Any]:
    """The container that runs the job's command."""
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "command": list(launch.argv),  # replaces the image's entrypoint; never a shell unless asked
        "env": env,
        "securityContext": security,
        "volumeMounts": mounts,
    }
    if workdir != WORK_MOUNT:  # the job's source: cloned or unpacked into src
        container["workingDir"] = workdir
    if res := resources(launch):
        container["resources"] = res
    return container


def init_containers(
    launch: AttemptLaunch, opts: KubeOptions, name: str, security: dict[str, Any], git: GitFetch | None
) -> list[dict[str, Any]]:
    """What runs before the job: its git source's clone and checkout (or its packed workdir), and
    its steps' outputs folders, fetched (kube_fetch). ValueError: a fetch with no options."""
    containers: list[dict[str, Any]] = []
    if launch.source_repo:
        fetch = git or unchecked_fetch(launch.source_repo)
        containers += [
            git_init_container(fetch, opts.git_image, security, name, WORK_MOUNT),
            checkout_init_container(launch.source_commit, opts.git_image, security, WORK_MOUNT),
        ]
    if needs_fetch(launch):
        if opts.fetch is None:
            raise ValueError(FETCH_UNSET)
        containers.append(
            fetch_init_container(launch, opts.fetch, security, name, WORK_MOUNT, resources(launch))
        )
    return containers


FETCH_UNSET = (
    "this kubernetes executor cannot fetch a packed workdir or steps' outputs into a pod: set "
    "TRAINYARD_EXECUTOR_KUBE_FETCH_IMAGE and TRAINYARD_EXECUTOR_KUBE_FETCH_NATS_PASSWORD "
    "(docs/executors.md, workdir on Kubernetes)"
)


def pod_labels(launch: AttemptLaunch, labels: Mapping[str, str]) -> dict[str, str]:
    """The attempt's labels, and the mark the NATS NetworkPolicy admits on a pod that fetches."""
    out = dict(labels)
    if needs_fetch(launch):
        out[FETCH_LABEL] = "true"
    return out


def job_manifest(
    launch: AttemptLaunch,
    opts: KubeOptions,
    host_only: frozenset[str],
    *,
    output_dir: str,
    started_at: float,
    git: GitFetch | None = None,
) -> dict[str, Any]:
    """The Job of one attempt. Raises :class:`GangSplitError` and ``ValueError`` (no image).
    ``git``: how its source is fetched (kube_source.kube_git_fetch: the installation's rule
    checked); None: the default rule, unchecked (the credential stays out of the manifest)."""
    image = launch.image or opts.default_image
    if not image:
        raise ValueError(
            "no image: the job spec names none and this kubernetes executor has no default image"
        )
    replicas = check_gang(launch)
    name = job_name(launch.job_id, launch.attempt)
    labels = attempt_labels(launch.job_id, launch.attempt, opts.executor_id)
    if replicas > 1:
        labels[LABEL_GANG] = "true"
    grace = max(0, math.ceil(launch.grace_s))
    workdir = f"{WORK_MOUNT}/src" if launch.source_repo or launch.workdir_digest else WORK_MOUNT
    claim = opts.outputs_claim
    env = env_entries(
        name,
        # import trainyard: reports as marked lines on stderr (kube_reporter)
        reporter_env(container_env(launch, host_only, workdir, checkpoints=claim is not None)),
        frozenset(launch.secret_env),
    )
    if replicas > 1:
        env += gang_env(name, replicas, opts.master_port)
    pod_security, container_security = _security(opts)
    mounts, volumes = _storage(launch, claim)
    container = _job_container(launch, image, env, container_security, mounts, workdir)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": grace,
        "securityContext": pod_security,
        "containers": [container],
        "volumes": volumes,
        "enableServiceLinks": False,
        "automountServiceAccountToken": opts.automount_token,
    }
    if init := init_containers(launch, opts, name, container_security, git):
        pod_spec["initContainers"] = init
    if opts.service_account:
        pod_spec["serviceAccountName"] = opts.service_account
    if opts.image_pull_secret:
        pod_spec["imagePullSecrets"] = [{"name": opts.image_pull_secret}]
    spec: dict[str, Any] = {
        "backoffLimit": 0,
        "template": {"metadata": {"labels": pod_labels(launch, labels)}, "spec": pod_spec},
    }
    if launch.timeout_s is not None:
        spec["activeDeadlineSeconds"] = max(1, math.ceil(launch.timeout_s))
    if opts.ttl_seconds is not None:
        spec["ttlSecondsAfterFinished"] = opts.ttl_seconds
    if replicas > 1:
        spec.update(completionMode="Indexed", completions=replicas, parallelism=replicas)
        pod_spec["subdomain"] = name
    annotations = attempt_annotations(launch, output_dir, started_at, replicas)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": opts.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec,
    }


def companion_metadata(job: Mapping[str, Any], opts: KubeOptions, owner_uid: str | None) -> dict[str, Any]:
    """Metadata of an object that lives and dies with its Job (or TrainJob: same name and labels):
    a gang's Service and NetworkPolicy, the attempt's Secret."""
    meta = job["metadata"]
    metadata: dict[str, Any] = {
        "name": meta["name"],
        "namespace": opts.namespace,
        "labels": dict(meta["labels"]),
    }
    if owner_uid:  # deleted with its Job by the garbage collector
        metadata["ownerReferences"] = [
            {
                "apiVersion": job.get("apiVersion", "batch/v1"),
                "kind": job.get("kind", "Job"),
                "name": meta["name"],
                "uid": owner_uid,
                "blockOwnerDeletion": False,
            }
        ]
    return metadata


def gang_selector(job: Mapping[str, Any]) -> dict[str, str]:
    """The pods of one gang attempt, and no other."""
    labels = job["metadata"]["labels"]
    return {LABEL_JOB: labels[LABEL_JOB], LABEL_ATTEMPT: labels[LABEL_ATTEMPT]}


def service_manifest(job: Mapping[str, Any], opts: KubeOptions, owner_uid: str | None) -> dict[str, Any]:
    """The headless Service of a gang: DNS for ``<job>-<index>.<job>``, ready or not (ranks
    rendezvous before anything is ready)."""
    metadata = companion_metadata(job, opts, owner_uid)
    selector = gang_selector(job)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": opts.master_port, "targetPort": opts.master_port}],
        },
    }


def gang_network_policy(job: Mapping[str, Any], opts: KubeOptions, owner_uid: str | None) -> dict[str, Any]:
    """Ingress to a gang's pods from the same gang attempt only. With the jobs namespace's default
    deny, no other job (another team's included) can reach a rank; NetworkPolicy cannot say "pods
    with my own label value", so each gang gets its own policy, removed with its Job."""
    selector = gang_selector(job)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": companion_metadata(job, opts, owner_uid),
        "spec": {
            "podSelector": {"matchLabels": dict(selector)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": dict(selector)}}]}],
        },
    }
