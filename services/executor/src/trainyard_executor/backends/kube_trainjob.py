"""An attempt as a Kubeflow Trainer v2 ``TrainJob`` (pure: manifests out, like kube_manifests).

The TrainJob names a (Cluster)TrainingRuntime, which holds the pod template, the JobSet shape and
the rendezvous (torch's ``PET_*`` variables for ``numNodes`` > 1); Trainyard fills in what the job
spec says: image, argv, env, nodes, resources per node and the deadline. It is created suspended
and resumed by the executor once the object exists as this attempt's (kubeflow.py), so a crash in
between leaves a TrainJob that runs nothing until an executor adopts it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from trainyard_executor.backends.base import AttemptLaunch
from trainyard_executor.backends.kube_fetch import FetchOptions, trainjob_fetch_patch
from trainyard_executor.backends.kube_manifests import (
    KubeOptions,
    attempt_annotations,
    attempt_labels,
    check_gang,
    container_env,
    job_name,
    resources,
)
from trainyard_executor.backends.kube_reporter import STREAM_ENV
from trainyard_executor.backends.kube_secret import env_entries

TRAINER_GROUP = "trainer.kubeflow.org"
TRAINER_VERSION = "v1alpha1"
TRAINJOBS = "trainjobs"
# the JobSet the Trainer makes of a TrainJob has its name; JobSet labels every pod with it
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
# the pod's own paths (nothing of the executor's is mounted): outputs stay in the pod, as on the
# kubernetes backend without a claim
WORKDIR = "/tmp/trainyard"
OUTPUT_DIR = f"{WORKDIR}/outputs"


@dataclass(frozen=True)
class TrainerOptions:
    """Which runtime the TrainJobs name, and which container of its pods runs the job."""

    runtime: str = "torch-distributed"
    runtime_kind: str = "ClusterTrainingRuntime"
    container: str = "node"
    """The runtime's trainer container (``node`` in Kubeflow's torch runtimes): its exit code and
    log are the attempt's."""
    fetch_container: str | None = None
    """The init container the runtime declares for Trainyard's fetch of steps' outputs folders
    (kube_fetch.trainjob_fetch_patch); None: the runtime has none, and such steps are refused."""


def trainjob_manifest(
    launch: AttemptLaunch,
    opts: KubeOptions,
    trainer: TrainerOptions,
    host_only: frozenset[str],
    *,
    output_dir: str,
    started_at: float,
    fetch: FetchOptions | None = None,
) -> dict[str, Any]:
    """The TrainJob of one attempt, suspended. ValueError when no image is known; GangSplitError
    for a gang the scheduler split (a TrainJob runs every node of it). ``fetch``: how the pods
    fetch steps' outputs folders (needed when the attempt has inputs; kubeflow.py refuses it
    otherwise)."""
    image = launch.image or opts.default_image
    if not image:
        raise ValueError(
            "the kubeflow backend needs an image: give the job spec an image or set "
            "TRAINYARD_EXECUTOR_DEFAULT_IMAGE"
        )
    nodes = check_gang(launch)
    name = job_name(launch.job_id, launch.attempt)
    env = container_env(launch, host_only, WORKDIR, checkpoints=False)
    env["TRAINYARD_OUTPUT_DIR"] = OUTPUT_DIR
    # reports as marked lines on stderr, which the executor takes out of rank 0's log; the reporter
    # itself is not mounted here (a TrainJob has no volumes of ours): an image that carries it reports
    env.update(STREAM_ENV)
    trainer_spec: dict[str, Any] = {
        "image": image,
        "command": list(launch.argv),  # replaces the image's entrypoint; a shell only when asked
        "numNodes": nodes,
        # secret values by reference to the attempt's Secret (kube_secret), never in the TrainJob
        "env": env_entries(name, dict(sorted(env.items())), frozenset(launch.secret_env)),
    }
    if per_node := resources(launch):
        trainer_spec["resourcesPerNode"] = per_node
    spec: dict[str, Any] = {
        "suspend": True,
        "runtimeRef": {"apiGroup": TRAINER_GROUP, "kind": trainer.runtime_kind, "name": trainer.runtime},
        "trainer": trainer_spec,
    }
    if launch.input_digests:
        if fetch is None or trainer.fetch_container is None:
            raise ValueError(
                "an attempt with inputs needs the fetch options and the runtime's fetch init container"
            )
        patch = trainjob_fetch_patch(
            launch, fetch, name, fetch_container=trainer.fetch_container, trainer_container=trainer.container
        )
        spec["runtimePatches"] = [patch]
    if launch.timeout_s is not None:
        # the Trainer counts it from the TrainJob's start, reset when it is resumed: here, from admission
        spec["activeDeadlineSeconds"] = max(1, math.ceil(launch.timeout_s))
    return {
        "apiVersion": f"{TRAINER_GROUP}/{TRAINER_VERSION}",
        "kind": "TrainJob",
        "metadata": {
            "name": name,
            "namespace": opts.namespace,
            "labels": attempt_labels(launch.job_id, launch.attempt, opts.executor_id),
            "annotations": attempt_annotations(launch, output_dir, started_at, nodes),
        },
        "spec": spec,
    }


def suspended(trainjob: dict[str, Any]) -> bool:
    return bool((trainjob.get("spec") or {}).get("suspend"))


RESUME = {"spec": {"suspend": False}}
