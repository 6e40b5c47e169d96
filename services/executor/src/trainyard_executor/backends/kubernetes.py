"""Kubernetes backend: one ``batch/v1`` Job per attempt, through the official client.

The manifests are built by :mod:`kube_manifests` and read back by :mod:`kube_status` (both pure).
This module is the I/O: it creates the Job (and a gang's headless Service), follows the Job and its
pods with list+watch, streams each pod's log into the line sink (a gang's lines tagged with their
rank), and deletes the Job on cancel, on a timeout the cluster did not enforce, and once the
outcome is recorded.

The official client is synchronous. Short calls run in a daemon thread each; every watch and log
stream has a thread of its own (the loop's default executor would be exhausted by a few of them).
A watch is restarted (re-listing) whenever it ends or fails, so a dropped connection or an expired
resource version only delays the verdict; and the label selector is checked again on our side.

Nodes are not ours: the capacity this executor advertises is the pool's quota from its settings.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from trainyard_contracts import Isolation
from trainyard_executor.backends.base import (
    AttemptLaunch,
    FoundAttempt,
    LineSink,
    Resources,
)
from trainyard_executor.backends.finished import FinishedAttempt
from trainyard_executor.backends.isolation import kube_isolation
from trainyard_executor.backends.kube_attempt import CURSOR_FILE, META_DIR, KubeAttempt, api_error, has_labels
from trainyard_executor.backends.kube_fetch import fetch_options, needs_fetch
from trainyard_executor.backends.kube_manifests import (
    ANNOT_GRACE,
    ANNOT_JOB,
    ANNOT_OUTPUT_DIR,
    ANNOT_STARTED,
    ANNOT_TIMEOUT,
    ANNOT_WORKDIR,
    ANNOT_WORLD,
    CONTAINER,
    FETCH_UNSET,
    LABEL_ATTEMPT,
    LABEL_EXECUTOR,
    LABEL_GANG,
    LABEL_JOB,
    GangSplitError,
    KubeOptions,
    companion_metadata,
    executor_selector,
    gang_network_policy,
    job_manifest,
    job_name,
    label_value,
    service_manifest,
)
from trainyard_executor.backends.kube_reporter import reporter_config_map, reporter_config_map_name
from trainyard_executor.backends.kube_secret import attempt_secret, secret_name
from trainyard_executor.backends.kube_source import GitFetch, git_config_key, kube_git_fetch
from trainyard_executor.backends.kube_status import (
    job_end,
)
from trainyard_executor.backends.kube_usage import (
    METRICS_GROUP,
    METRICS_PLURAL,
    METRICS_VERSION,
    MetricsApiNotes,
)
from trainyard_executor.backends.threads import in_thread
from trainyard_executor.jobenv import HOST_ONLY_ENV
from trainyard_shared.gitpolicy import GitPolicy, GitSettings, RepoRefused

log = logging.getLogger("trainyard.executor.kubernetes")
T = TypeVar("T")
POOL_SIZE = 128  # every running attempt keeps two watches and one log stream per pod open


def api_client_from_config(context: str | None = None, config_file: str | None = None) -> k8s.ApiClient:
    """In a pod: the service account; elsewhere the kubeconfig (``context`` or its current one)."""
    from kubernetes import config as k8s_config

    configuration = k8s.Configuration()
    # (the kubernetes client's config loaders are not annotated)
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            # KUBECONFIG as it is now (the client reads it once, when first imported)
            config_file=config_file or os.environ.get("KUBECONFIG"),
            context=context,
            client_configuration=configuration,
        )
    configuration.connection_pool_maxsize = POOL_SIZE
    return k8s.ApiClient(configuration)


class KubernetesBackend:
    """Attempts as Jobs in one namespace of a cluster this executor does not own."""

    name = "kubernetes"
    kind = "Job"
    """What an attempt is here, in messages."""
    container = CONTAINER
    """The container that runs the job in each pod: its exit code and log are the attempt's."""
    fetches_in_pod = True
    """A packed workdir and steps' outputs are fetched by the pod (kube_fetch), not by the executor."""

    def __init__(
        self,
        api_client_factory: Callable[[], k8s.ApiClient],
        options: KubeOptions,
        capacity: Resources,
        *,
        outputs_mount: Path | None = None,
        keep_failed: bool = False,
        deadline_slack_s: float = 30.0,
        watch_idle_s: float = 60.0,
        git_policy: GitPolicy | None = None,
    ) -> None:
        self._factory = api_client_factory
        # the installation's rule on git sources (TRAINYARD_GIT_*), applied to the pod's clone
        self.git_policy = git_policy or GitSettings().policy()
        self._api: k8s.ApiClient | None = None
        self._lock = threading.Lock()
        self.options = options
        self._capacity = capacity
        self.outputs_mount = outputs_mount
        self.keep_failed = keep_failed
        self.deadline_slack_s = deadline_slack_s
        self.watch_idle_s = watch_idle_s
        self.metrics_notes = MetricsApiNotes()  # the one log line of a cluster without metrics-server
        self._reporter_ready = False  # the reporter's ConfigMap exists (kube_reporter)
        self._reporter_refused = False

    @property
    def api(self) -> k8s.ApiClient:
        with self._lock:
            if self._api is None:
                self._api = self._factory()
            return self._api

    @property
    def batch(self) -> k8s.BatchV1Api:
        return k8s.BatchV1Api(self.api)

    @property
    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.api)

    @property
    def networking(self) -> k8s.NetworkingV1Api:
        return k8s.NetworkingV1Api(self.api)

    # -- what an attempt is (the kubeflow backend's TrainJob answers these differently) ----------

    @property
    def attempt_list_fn(self) -> Callable[..., Any]:
        """list (and watch) the attempts' objects: ``fn(namespace, label_selector=...)``."""
        return self.batch.list_namespaced_job

    def pod_labels(self, name: str, labels: dict[str, str]) -> dict[str, str]:
        """The labels of the attempt's pods (``labels``: the attempt's own): a Job's pod template
        carries the attempt's labels."""
        return labels

    def read_attempt(self, name: str) -> dict[str, Any]:
        return self._raw(self.batch.read_namespaced_job(name, self.options.namespace))

    def isolation(self) -> Isolation:
        return kube_isolation(self.options.run_as_user, self.options.automount_token)

    def capacity(self) -> Resources:
        """The pool's quota as configured: the cluster's nodes are shared, not this executor's."""
        return self._capacity

    def _raw(self, model: Any) -> dict[str, Any]:
        # the kubernetes client is not annotated
        return self.api.sanitize_for_serialization(model)  # type: ignore[no-any-return,no-untyped-call]

    # -- starting -----------------------------------------------------------------------------

    def output_dir(self, launch: AttemptLaunch) -> Path:
        """Where this executor sees the attempt's outputs: on the shared claim when it mounts it,
        else the local work dir (the pod's outputs then stay in the pod)."""
        if self.outputs_mount is not None and self.options.outputs_claim:
            return self.outputs_mount / "outputs" / launch.job_id / f"attempt-{launch.attempt}"
        return launch.workdir / launch.output_subdir

    def refusal(self, launch: AttemptLaunch) -> str | None:
        """Why this backend cannot run the attempt as it is, or None; the work dir is made."""
        try:
            launch.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"could not prepare the work dir: {exc}"
        if launch.runtime_pip:
            return (
                f"runtime_env.pip is not supported by the {self.name} backend: "
                "install the packages in the image"
            )
        return self.fetch_refusal(launch)

    def fetch_refusal(self, launch: AttemptLaunch) -> str | None:
        """Why the attempt's packed workdir, inputs or outputs folder cannot be carried, or None."""
        if needs_fetch(launch) and self.options.fetch is None:
            # never run the job without the folders it names (docs/executors.md, "workdir")
            return FETCH_UNSET
        if launch.pass_outputs and not self.outputs_on_host:
            # its dependents would run without its outputs folder (docs/workflows.md)
            return (
                f"this step's outputs folder is passed to later steps ($TRAINYARD_INPUTS), which "
                f"the {self.name} backend packs from its outputs claim: set "
                "TRAINYARD_EXECUTOR_KUBE_OUTPUTS_CLAIM and TRAINYARD_EXECUTOR_KUBE_OUTPUTS_MOUNT"
            )
        return None

    @property
    def outputs_on_host(self) -> bool:
        """This executor reads the attempts' outputs folders (the claim, mounted here): a step's
        is packed for its dependents as on the host backends."""
        return self.outputs_mount is not None and bool(self.options.outputs_claim)

    async def start(self, launch: AttemptLaunch, on_line: LineSink) -> KubeAttempt | FinishedAttempt:
        output_dir = self.output_dir(launch)
        if (refused := self.refusal(launch)) is not None:
            return FinishedAttempt(refused, output_dir)
        started_at = time.time()
        try:
            create = await self.prepare(launch, str(output_dir), started_at)
        except RepoRefused as exc:
            return FinishedAttempt(f"source repository refused: {exc}", output_dir)
        except (GangSplitError, ValueError) as exc:
            return FinishedAttempt(str(exc), output_dir)
        try:
            made = await in_thread(create, name=f"create-{launch.job_id}")
        except NotOurs as exc:
            return FinishedAttempt(str(exc), output_dir)
        except Exception as exc:
            return FinishedAttempt(f"could not create the {self.kind}: {api_error(exc)}", output_dir)
        annotations = made["metadata"].get("annotations") or {}
        return KubeAttempt(
            self,
            made["metadata"]["name"],
            launch,
            output_dir,
            on_line,
            world_size=int(annotations.get(ANNOT_WORLD) or 1),
            started_at=float(annotations.get(ANNOT_STARTED) or started_at),
            skip=_read_cursor(launch.workdir),
        )

    async def prepare(
        self, launch: AttemptLaunch, output_dir: str, started_at: float
    ) -> Callable[[], dict[str, Any]]:
        """The attempt's objects, checked and built; returns the blocking call that creates them
        (and answers the attempt's object as it exists). Raises what :meth:`start` turns into a
        failed attempt: RepoRefused, GangSplitError, ValueError."""
        # the installation's git rule, checked here (it resolves the host: in a thread)
        git = (
            await in_thread(kube_git_fetch, launch.source_repo, self.git_policy, name="git-rule")
            if launch.source_repo
            else None
        )
        manifest = job_manifest(
            launch, self.options, HOST_ONLY_ENV, output_dir=output_dir, started_at=started_at, git=git
        )
        return functools.partial(self._create, manifest, self.secret_of(manifest, launch, git))

    def secret_of(
        self, manifest: dict[str, Any], launch: AttemptLaunch, git: GitFetch | None = None
    ) -> dict[str, Any] | None:
        """The attempt's Secret (kube_secret): its secret env values and source credential."""
        fetch = self.options.fetch
        return attempt_secret(
            companion_metadata(manifest, self.options, None),
            git_config_key=git_config_key(git),
            secret_env={k: launch.env[k] for k in launch.secret_env if k in launch.env},
            fetch_password=fetch.password if fetch is not None and needs_fetch(launch) else None,
        )

    def _create(self, manifest: dict[str, Any], secret: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create the Job (and a gang's Service). A Job of this very attempt that exists already
        (a redelivered start, a restart between create and record) is attached to, never doubled.
        ``secret``: the attempt's Secret (kube_secret), made before the Job (its pod needs it at
        once) and then owned by it (the garbage collector removes it with the Job)."""
        ns = self.options.namespace
        name = manifest["metadata"]["name"]
        self._ensure_reporter()
        # the client's stubs want a V1Job model; it sends a plain dict as it is
        job = self.create_or_attach(
            lambda: self._raw(self.batch.create_namespaced_job(ns, manifest)),  # type: ignore[arg-type]
            manifest,
            secret,
        )
        if manifest["spec"].get("completionMode") == "Indexed":
            owner = (job.get("metadata") or {}).get("uid")
            try:
                self._create_gang_object(
                    self.networking.create_namespaced_network_policy,
                    gang_network_policy(manifest, self.options, owner),
                )
                self._create_gang_object(
                    self.core.create_namespaced_service, service_manifest(manifest, self.options, owner)
                )
            except ApiException:
                with contextlib.suppress(ApiException):
                    self.batch.delete_namespaced_job(name, ns, propagation_policy="Background")
                raise
        return job

    def _ensure_reporter(self) -> None:
        """The ConfigMap of the reporter's files (kube_reporter), made once per version: one that
        exists is the same content (its name is its digest). A refusal is said once and the Job
        still made (its volume is optional; only ``import trainyard`` fails in it)."""
        if self._reporter_ready:
            return
        try:
            self.core.create_namespaced_config_map(
                self.options.namespace,
                reporter_config_map(self.options.namespace),  # type: ignore[arg-type]  # a dict is sent as it is
            )
        except ApiException as exc:
            if exc.status != 409:
                if not self._reporter_refused:
                    self._reporter_refused = True
                    log.warning(
                        "could not create the reporter's ConfigMap: import trainyard fails in jobs",
                        extra={"configmap": reporter_config_map_name(), "error": api_error(exc)},
                    )
                return
        self._reporter_ready = True

    def create_or_attach(
        self,
        create: Callable[[], dict[str, Any] | None],
        manifest: dict[str, Any],
        secret: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The attempt's object as created, or as it exists when this executor made it before (a
        redelivered start, a restart between create and record): attached to, never doubled. One
        of the same name that another executor made is refused (:class:`NotOurs`). ``secret``:
        the attempt's Secret, made before the object (its pods need it at once) and then owned by
        it (the garbage collector removes it with the object)."""
        if secret is not None:
            self._create_gang_object(self.core.create_namespaced_secret, secret)
        made = self._create_or_attach(create, manifest)
        if secret is not None:
            owned = {"metadata": companion_metadata(manifest, self.options, made["metadata"].get("uid"))}
            with contextlib.suppress(ApiException):  # unowned, it still goes with the attempt
                self.core.patch_namespaced_secret(secret["metadata"]["name"], self.options.namespace, owned)
        return made

    def _create_or_attach(
        self, create: Callable[[], dict[str, Any] | None], manifest: dict[str, Any]
    ) -> dict[str, Any]:
        name = manifest["metadata"]["name"]
        try:
            created = create()
        except ApiException as exc:
            if exc.status != 409:
                raise
            found = self.read_attempt(name)
            owner = ((found.get("metadata") or {}).get("labels") or {}).get(LABEL_EXECUTOR)
            if owner != manifest["metadata"]["labels"][LABEL_EXECUTOR]:
                kind = manifest.get("kind", "Job")
                raise NotOurs(f"a {kind} named {name} exists and belongs to executor {owner!r}") from exc
            log.warning("attached to the existing object of this attempt", extra={"job": name})
            return found
        # an API may answer a create with no body: what was sent is what exists
        return created or manifest

    def _create_gang_object(self, create: Callable[..., Any], body: dict[str, Any]) -> None:
        """One of a gang's companions (its Service, its NetworkPolicy); one that exists is this
        attempt's own (same name), from an earlier start."""
        try:
            create(self.options.namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    # -- blocking helpers (threads) -----------------------------------------------------------

    def pod_metrics(self, pod: str) -> dict[str, Any]:
        """(Blocking.) The pod's PodMetrics from the resource metrics API (kube_usage.py)."""
        answer = k8s.CustomObjectsApi(self.api).get_namespaced_custom_object(
            METRICS_GROUP,
            METRICS_VERSION,
            self.options.namespace,
            METRICS_PLURAL,
            pod,
            _request_timeout=(5, 10),
        )
        return answer if isinstance(answer, dict) else {}

    def list_pods(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        pods = self.core.list_namespaced_pod(self.options.namespace, label_selector=selector)
        return [p for p in (self._raw(i) for i in pods.items) if has_labels(p, labels)]

    def delete_attempt(self, name: str, grace_s: float, propagation: str) -> bool:
        """Delete a Job (pods after their grace) and its Service; True if the Job is gone now."""
        ns = self.options.namespace
        grace = max(0, math.ceil(grace_s))
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_service(name, ns)
        with contextlib.suppress(ApiException):
            self.networking.delete_namespaced_network_policy(name, ns)
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_secret(secret_name(name), ns)
        return self.gone_after(
            lambda: self.batch.delete_namespaced_job(
                name, ns, propagation_policy=propagation, grace_period_seconds=grace
            ),
            name,
        )

    def gone_after(self, delete: Callable[[], object], name: str) -> bool:
        """Delete the attempt's object; True if it is gone now (Foreground: it stays, with a
        deletionTimestamp, until its pods are gone)."""
        try:
            delete()
            self.read_attempt(name)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    def list_jobs(self) -> list[dict[str, Any]]:
        """This executor's Jobs (running or ended), from their labels."""
        jobs = self.batch.list_namespaced_job(
            self.options.namespace, label_selector=executor_selector(self.options.executor_id)
        )
        want = {LABEL_EXECUTOR: label_value(self.options.executor_id)}
        return [j for j in (self._raw(i) for i in jobs.items) if has_labels(j, want)]

    # -- after a restart ----------------------------------------------------------------------

    async def find_attempts(self) -> list[FoundAttempt]:
        found = []
        for job in await in_thread(self.list_jobs, name="list-jobs"):
            meta = job["metadata"]
            labels = meta.get("labels") or {}
            end = job_end(job)
            found.append(
                FoundAttempt(
                    job_id=(meta.get("annotations") or {}).get(ANNOT_JOB) or labels.get(LABEL_JOB, ""),
                    attempt=int(labels.get(LABEL_ATTEMPT) or 0),
                    ref=meta["name"],
                    detail=f"Job {meta['name']} {end.reason if end else 'active'}",
                )
            )
        return sorted(found, key=lambda f: (f.job_id, f.attempt))

    async def adopt(self, found: FoundAttempt, on_line: LineSink) -> KubeAttempt:
        """Follow the Job of an attempt a previous run of this executor created."""
        job = await in_thread(self.read_attempt, found.ref, name="read-attempt")
        annotations = job["metadata"].get("annotations") or {}
        timeout = annotations.get(ANNOT_TIMEOUT)
        output_dir = Path(annotations.get(ANNOT_OUTPUT_DIR) or ".")
        labels = job["metadata"].get("labels") or {}
        launch = AttemptLaunch(
            job_id=found.job_id,
            attempt=found.attempt,
            argv=[],
            env={},
            workdir=Path(annotations.get(ANNOT_WORKDIR) or output_dir.parent),
            timeout_s=float(timeout) if timeout else None,
            grace_s=float(annotations.get(ANNOT_GRACE) or 10.0),
        )
        return KubeAttempt(
            self,
            found.ref,
            launch,
            output_dir,
            on_line,
            world_size=int(annotations.get(ANNOT_WORLD) or (2 if labels.get(LABEL_GANG) else 1)),
            started_at=float(annotations.get(ANNOT_STARTED) or time.time()),
            skip=_read_cursor(launch.workdir),
        )

    async def discard(self, found: FoundAttempt, grace_s: float) -> None:
        """Delete the Job of an attempt that is no longer current (its pods get the grace)."""
        try:
            await in_thread(self.delete_attempt, found.ref, grace_s, "Foreground", name="discard")
        except Exception as exc:
            log.warning("could not delete a stale Job", extra={"job": found.ref, "error": api_error(exc)})


class NotOurs(RuntimeError):
    """An object of the attempt's name exists and another executor made it."""


def _read_cursor(workdir: Path) -> dict[str, int]:
    try:
        data = json.loads((workdir / META_DIR / CURSOR_FILE).read_text())
        return {str(k): int(v) for k, v in data.items()}
    except (OSError, ValueError, AttributeError):
        return {}


def pool_quota(settings: Any, backend: str) -> Resources:
    """What a cluster backend advertises: the pool's quota from the settings (the nodes are shared)."""
    if settings.cpu is None or settings.memory is None:
        raise ValueError(
            f"the {backend} backend advertises the pool's quota, not a machine's: set "
            "TRAINYARD_EXECUTOR_CPU and TRAINYARD_EXECUTOR_MEMORY (and TRAINYARD_EXECUTOR_GPU)"
        )
    return Resources(cpu=float(settings.cpu), memory_mb=int(settings.memory), gpu=int(settings.gpu or 0))


B = TypeVar("B", bound="KubernetesBackend")


def kubernetes_backend(settings: Any, data: Path) -> KubernetesBackend:
    """The backend of TRAINYARD_EXECUTOR_BACKEND=kubernetes, from the executor's settings."""
    return cluster_backend(KubernetesBackend, settings)


def cluster_backend(kind: type[B], settings: Any, **extra: Any) -> B:
    """A backend of this family (kubernetes, kubeflow) from the executor's settings; ``extra``:
    the arguments only ``kind`` takes."""
    capacity = pool_quota(settings, kind.name)
    options = KubeOptions(
        namespace=settings.kube_namespace,
        executor_id=settings.id,
        default_image=settings.default_image,
        ttl_seconds=settings.kube_ttl_seconds,
        run_as_user=settings.kube_run_as_user or None,
        outputs_claim=settings.kube_outputs_claim,
        automount_token=settings.kube_automount_token,
        fetch=fetch_options(settings),
    )
    return kind(
        lambda: api_client_from_config(settings.kube_context),
        options,
        capacity,
        outputs_mount=settings.kube_outputs_mount,
        keep_failed=settings.keep_failed_containers,
        **extra,
    )


__all__ = [
    "KubeAttempt",
    "KubernetesBackend",
    "NotOurs",
    "api_client_from_config",
    "cluster_backend",
    "job_name",
    "kubernetes_backend",
    "pool_quota",
]
