"""Kubeflow backend: one Kubeflow Trainer v2 ``TrainJob`` per attempt (docs/kubeflow.md).

Everything but the object is the kubernetes backend's: the client, the watches, the pods' logs
and their cursor, the verdict from conditions and exit codes (:class:`KubeAttempt`), adoption
after a restart. What differs is answered here: the attempt is a ``TrainJob``
(``trainer.kubeflow.org/v1alpha1``, through the custom objects API), its pods are the ones JobSet
labels with the TrainJob's name, and their job container is the runtime's trainer (``node``).

- **Admission**: the TrainJob is created suspended, then resumed. The scheduler has admitted the
  attempt when the executor is told to start it; the suspended create makes the object this
  attempt's before anything runs (a redelivered start attaches to it; one another executor made
  is refused), and a crash before the resume leaves a TrainJob that runs nothing until adopted.
- **States**: ``Complete`` succeeded; ``Failed`` failed with the pods' exit code or the condition's
  reason and message (``DeadlineExceeded``: timed out); ``Suspended`` (someone else suspended it,
  say Kueue) is waited out, as a pending pod is.
- **Cancel**: deletion (foreground: the JobSet and its pods go first, with the grace).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from trainyard_contracts import Isolation
from trainyard_executor.backends.base import AttemptLaunch, FoundAttempt, LineSink
from trainyard_executor.backends.kube_attempt import KubeAttempt, has_labels
from trainyard_executor.backends.kube_manifests import (
    FETCH_UNSET,
    LABEL_EXECUTOR,
    executor_selector,
    label_value,
)
from trainyard_executor.backends.kube_secret import secret_name
from trainyard_executor.backends.kube_trainjob import (
    JOBSET_NAME_LABEL,
    RESUME,
    TRAINER_GROUP,
    TRAINER_VERSION,
    TRAINJOBS,
    TrainerOptions,
    suspended,
    trainjob_manifest,
)
from trainyard_executor.backends.kubernetes import (
    KubernetesBackend,
    cluster_backend,
)
from trainyard_executor.backends.threads import in_thread
from trainyard_executor.jobenv import HOST_ONLY_ENV


class KubeflowBackend(KubernetesBackend):
    """Attempts as TrainJobs in one namespace of a cluster running the Kubeflow Trainer."""

    name = "kubeflow"
    kind = "TrainJob"

    def __init__(self, *args: Any, trainer: TrainerOptions | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trainer = trainer or TrainerOptions()
        self.container = self.trainer.container

    @property
    def outputs_on_host(self) -> bool:
        return False  # (fetch_refusal: a step that passes its outputs is refused)

    def output_dir(self, launch: AttemptLaunch) -> Path:
        """The local work dir's: the TrainJob's pods mount no claim of the executor's (their
        outputs stay in the pods)."""
        return launch.workdir / launch.output_subdir

    @property
    def custom(self) -> k8s.CustomObjectsApi:
        return k8s.CustomObjectsApi(self.api)

    def isolation(self) -> Isolation:
        return Isolation(
            job_user="as the training runtime's pod template says",
            root=True,  # not ours to prevent: the runtime's securityContext decides
            containment="pod",
            gang_network="as the training runtime and the cluster's network policies allow",
            notes=[
                f"pods come from the {self.trainer.runtime_kind} {self.trainer.runtime}: its "
                "securityContext and service account apply",
                "env values are plain values in the TrainJob, secret_env's in a Secret per attempt",
            ],
        )

    # -- what an attempt is -----------------------------------------------------------------------

    @property
    def attempt_list_fn(self) -> Callable[..., Any]:
        # fn(namespace, label_selector=...), as the watches call a namespaced list
        return functools.partial(
            self.custom.list_namespaced_custom_object, TRAINER_GROUP, TRAINER_VERSION, plural=TRAINJOBS
        )

    def pod_labels(self, name: str, labels: dict[str, str]) -> dict[str, str]:
        """The Trainer runs a TrainJob as a JobSet of its name, whose pods JobSet labels so; the
        attempt's own labels are not propagated to pods by every Trainer version."""
        return {JOBSET_NAME_LABEL: name}

    def read_attempt(self, name: str) -> dict[str, Any]:
        return _as_dict(
            self.custom.get_namespaced_custom_object(
                TRAINER_GROUP, TRAINER_VERSION, self.options.namespace, TRAINJOBS, name
            )
        )

    # -- starting -----------------------------------------------------------------------------

    def refusal(self, launch: AttemptLaunch) -> str | None:
        if (refused := super().refusal(launch)) is not None:
            return refused
        if launch.source_repo:
            return (
                "source is not supported by the kubeflow backend: build the code into the image "
                "(a TrainJob's runtime runs no clone before the trainer)"
            )
        return None

    def fetch_refusal(self, launch: AttemptLaunch) -> str | None:
        """A TrainJob's pods are the Trainer's: steps' outputs folders reach them only through the
        init container the runtime declares for it (kube_fetch.trainjob_fetch_patch), a packed
        workdir not at all (the trainer's working dir cannot be patched), and no claim of the
        executor's holds their outputs."""
        if launch.workdir_digest is not None:
            # never run the job without the folder it names (docs/executors.md, "workdir")
            return (
                "workdir is not supported by the kubeflow backend: build the code into the image, "
                "or run the job on a kubernetes, local, docker or podman executor"
            )
        if launch.pass_outputs:
            # its dependents would run without its outputs folder (docs/workflows.md)
            return (
                "this step's outputs folder is passed to later steps ($TRAINYARD_INPUTS), which the "
                "kubeflow backend cannot pack (a TrainJob's pods mount no claim of the executor's): "
                "run the step on a kubernetes, local, docker or podman executor"
            )
        if launch.input_digests and self.trainer.fetch_container is None:
            # never run a step without the folders its dependencies passed it (docs/workflows.md)
            return (
                "$TRAINYARD_INPUTS (the outputs folders of the steps this one depends on) needs a "
                "training runtime that declares Trainyard's fetch init container: declare it "
                '(docs/kubeflow.md, "Step inputs") and set TRAINYARD_EXECUTOR_KUBEFLOW_FETCH_CONTAINER, '
                "or run the step on a kubernetes, local, docker or podman executor"
            )
        if launch.input_digests and self.options.fetch is None:
            return FETCH_UNSET
        return None

    async def prepare(
        self, launch: AttemptLaunch, output_dir: str, started_at: float
    ) -> Callable[[], dict[str, Any]]:
        manifest = trainjob_manifest(
            launch,
            self.options,
            self.trainer,
            HOST_ONLY_ENV,
            output_dir=output_dir,
            started_at=started_at,
            fetch=self.options.fetch,
        )
        return functools.partial(self._create_and_resume, manifest, self.secret_of(manifest, launch))

    def _create_and_resume(self, manifest: dict[str, Any], secret: dict[str, Any] | None) -> dict[str, Any]:
        ns = self.options.namespace
        trainjob = self.create_or_attach(
            lambda: _as_dict(
                self.custom.create_namespaced_custom_object(
                    TRAINER_GROUP, TRAINER_VERSION, ns, TRAINJOBS, manifest
                )
            ),
            manifest,
            secret,
        )
        if (dropped := dropped_patches(manifest, trainjob)) is not None:
            # a Trainer whose API has no runtimePatches prunes them: the pods would run without
            # the step's inputs, so the TrainJob (still suspended) goes and the attempt fails
            self.delete_attempt(manifest["metadata"]["name"], 0, "Background")
            raise RuntimeError(dropped)
        self.resume(manifest["metadata"]["name"])
        return trainjob

    def resume(self, name: str) -> None:
        """Admitted: let the Trainer run it (a merge patch of ``spec.suspend``)."""
        self.custom.patch_namespaced_custom_object(
            TRAINER_GROUP, TRAINER_VERSION, self.options.namespace, TRAINJOBS, name, RESUME
        )

    # -- stopping -----------------------------------------------------------------------------

    def delete_attempt(self, name: str, grace_s: float, propagation: str) -> bool:
        """Delete the TrainJob (its JobSet and pods go with it); True if it is gone now."""
        with contextlib.suppress(ApiException):  # owned by the TrainJob; gone now, not at the GC's pace
            self.core.delete_namespaced_secret(secret_name(name), self.options.namespace)
        return self.gone_after(
            lambda: self.custom.delete_namespaced_custom_object(
                TRAINER_GROUP,
                TRAINER_VERSION,
                self.options.namespace,
                TRAINJOBS,
                name,
                grace_period_seconds=max(0, math.ceil(grace_s)),
                propagation_policy=propagation,
            ),
            name,
        )

    def list_jobs(self) -> list[dict[str, Any]]:
        """This executor's TrainJobs (running or ended), from their labels."""
        found = _as_dict(
            self.custom.list_namespaced_custom_object(
                TRAINER_GROUP,
                TRAINER_VERSION,
                self.options.namespace,
                TRAINJOBS,
                label_selector=executor_selector(self.options.executor_id),
            )
        )
        want = {LABEL_EXECUTOR: label_value(self.options.executor_id)}
        return [t for t in found.get("items") or () if has_labels(t, want)]

    async def adopt(self, found: FoundAttempt, on_line: LineSink) -> KubeAttempt:
        """Follow a TrainJob a previous run of this executor created; one still suspended (the
        executor stopped between create and resume) is the current attempt's: resume it."""
        attempt = await super().adopt(found, on_line)
        with contextlib.suppress(ApiException):
            if suspended(await in_thread(self.read_attempt, found.ref, name="read-attempt")):
                await in_thread(self.resume, found.ref, name="resume")
        return attempt


def dropped_patches(sent: dict[str, Any], stored: dict[str, Any]) -> str | None:
    """Why the TrainJob as the API server stored it lacks the runtime patches it was sent with, or
    None: a Trainer older than API 2.3 (``runtimePatches``) prunes the field it does not know."""
    want = (sent.get("spec") or {}).get("runtimePatches")
    if not want or (stored.get("spec") or {}).get("runtimePatches"):
        return None
    return (
        "the TrainJob was stored without its runtimePatches (the fetch of the step's inputs): "
        "this cluster's Kubeflow Trainer does not know the field (it needs Trainer API 2.3 or "
        "newer); run the step on a kubernetes, local, docker or podman executor"
    )


def _as_dict(answer: object) -> dict[str, Any]:
    """A custom objects API answer (JSON, unannotated by the client); {} for an empty body."""
    return answer if isinstance(answer, dict) else {}


def kubeflow_backend(settings: Any, data: Path) -> KubeflowBackend:
    """The backend of TRAINYARD_EXECUTOR_BACKEND=kubeflow, from the executor's settings (the
    kubernetes backend's, but pod settings: those are the training runtime's)."""
    trainer = TrainerOptions(
        runtime=settings.kubeflow_runtime,
        runtime_kind=settings.kubeflow_runtime_kind,
        container=settings.kubeflow_container,
        fetch_container=settings.kubeflow_fetch_container,
    )
    return cluster_backend(KubeflowBackend, settings, trainer=trainer)


__all__ = ["KubeflowBackend", "TrainerOptions", "dropped_patches", "kubeflow_backend"]
