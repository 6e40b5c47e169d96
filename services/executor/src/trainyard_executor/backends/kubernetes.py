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

import asyncio
import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from trainyard_executor.backends.base import (
    AttemptLaunch,
    AttemptOutcome,
    FoundAttempt,
    LineSink,
    Resources,
)
from trainyard_executor.backends.finished import FinishedAttempt
from trainyard_executor.backends.kube_manifests import (
    ANNOT_GRACE,
    ANNOT_JOB,
    ANNOT_OUTPUT_DIR,
    ANNOT_STARTED,
    ANNOT_TIMEOUT,
    ANNOT_WORKDIR,
    ANNOT_WORLD,
    CONTAINER,
    LABEL_ATTEMPT,
    LABEL_EXECUTOR,
    LABEL_GANG,
    LABEL_JOB,
    GangSplitError,
    KubeOptions,
    attempt_selector,
    executor_selector,
    gang_network_policy,
    job_manifest,
    job_name,
    label_value,
    service_manifest,
)
from trainyard_executor.backends.kube_status import (
    deciding_exit,
    failure_reason,
    job_end,
    pod_loggable,
    pod_rank,
    pod_stuck,
)
from trainyard_executor.backends.lines import LineSplitter
from trainyard_executor.backends.threads import in_thread
from trainyard_executor.jobenv import HOST_ONLY_ENV

log = logging.getLogger("trainyard.executor.kubernetes")

T = TypeVar("T")

META_DIR = ".trainyard"
CURSOR_FILE = "kube-log-cursor.json"
CURSOR_EVERY_S = 1.0
LOG_DRAIN_S = 5.0
LOG_RETRY_S = 1.0
LOG_IDLE_S = 600.0  # a follow request silent this long is made again (skipping what came)
WATCH_RETRY_S = 1.0
POOL_SIZE = 128  # every running attempt keeps two watches and one log stream per pod open


def _explain(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        try:
            return str(json.loads(exc.body or "{}").get("message") or exc.reason)
        except ValueError:
            return f"{exc.status} {exc.reason}"
    return str(exc) or type(exc).__name__


def _matches(obj: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """The label selector again, on our side (an API that ignored it must not mix attempts up)."""
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


def api_client_from_config(context: str | None = None, config_file: str | None = None) -> k8s.ApiClient:
    """In a pod: the service account; elsewhere the kubeconfig (``context`` or its current one)."""
    from kubernetes import config as k8s_config

    configuration = k8s.Configuration()
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


class _Watch:
    """list+watch of one kind of object with one label selector, in a thread, until stopped.

    Each event (``ADDED``/``MODIFIED``/``DELETED`` and the raw object) is handed to ``on_event`` on
    the event loop. A watch that ends (server timeout) or fails is started again after a pause; the
    restart replays what exists as ADDED, which the handlers treat as the state it is.
    """

    def __init__(
        self,
        list_fn: Callable[..., Any],
        namespace: str,
        labels: Mapping[str, str],
        on_event: Callable[[str, dict[str, Any]], None],
        idle_s: float,
        name: str,
    ) -> None:
        self.list_fn = list_fn
        self.namespace = namespace
        self.labels = dict(labels)
        self.on_event = on_event
        self.idle_s = idle_s
        self.loop = asyncio.get_running_loop()
        self._stopped = threading.Event()
        self._watch: Any = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._watch is not None:
            self._watch.stop()

    def _run(self) -> None:
        selector = ",".join(f"{k}={v}" for k, v in self.labels.items())
        while not self._stopped.is_set():
            self._watch = k8s_watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in self._watch.stream(
                    self.list_fn,
                    self.namespace,
                    label_selector=selector,
                    timeout_seconds=max(1, int(self.idle_s)),
                    # a silent connection is dropped and the watch started again
                    _request_timeout=(10, self.idle_s + 5),
                ):
                    if self._stopped.is_set():
                        break
                    obj = event.get("raw_object")
                    if isinstance(obj, dict) and event.get("type") != "ERROR" and _matches(obj, self.labels):
                        self.loop.call_soon_threadsafe(self.on_event, str(event["type"]), obj)
            except RuntimeError:  # the loop closed: nobody is listening
                return
            except Exception as exc:
                if self._stopped.is_set():
                    return
                log.debug("watch restarts", extra={"selector": selector, "error": _explain(exc)})
                self._stopped.wait(WATCH_RETRY_S)


class KubeAttempt:
    """One attempt's Job: its state from the watches, its pods' logs, its end."""

    pid: int | None = None

    def __init__(
        self,
        backend: KubernetesBackend,
        name: str,
        launch: AttemptLaunch,
        output_dir: Path,
        on_line: LineSink,
        *,
        world_size: int,
        started_at: float,
        skip: Mapping[str, int] | None = None,
    ) -> None:
        self.backend = backend
        self.name = name
        self.launch = launch
        self.output_dir = output_dir
        self.on_line = on_line
        self.gang = world_size > 1
        self.started_at = started_at
        self.job: dict[str, Any] | None = None
        self.job_gone = False
        self.pods: dict[str, dict[str, Any]] = {}
        self._changed = asyncio.Event()
        self._cancelled = False
        self._timed_out = False
        self._stop_deadline: float | None = None
        self._outcome_kind: str | None = None
        self._stuck = False
        self._skip = dict(skip or {})
        self._consumed: dict[str, int] = dict(self._skip)
        self._followers: dict[str, asyncio.Task[None]] = {}
        self._responses: list[Any] = []
        self._ended = threading.Event()
        self._cursor_path = launch.workdir / META_DIR / CURSOR_FILE
        labels = {LABEL_JOB: label_value(launch.job_id), LABEL_ATTEMPT: str(launch.attempt)}
        ns = backend.options.namespace
        self._watches = [
            _Watch(
                backend.batch.list_namespaced_job,
                ns,
                labels,
                self._on_job,
                backend.watch_idle_s,
                f"watch-job-{name}",
            ),
            _Watch(
                backend.core.list_namespaced_pod,
                ns,
                labels,
                self._on_pod,
                backend.watch_idle_s,
                f"watch-pods-{name}",
            ),
        ]
        self._cursor_task = asyncio.create_task(self._keep_cursor())

    # -- events from the watches (on the loop) ------------------------------------------------

    def _on_job(self, kind: str, obj: dict[str, Any]) -> None:
        if (obj.get("metadata") or {}).get("name") != self.name:
            return
        if kind == "DELETED":
            self.job_gone = True
        else:
            self.job, self.job_gone = obj, False
        self._changed.set()

    def _on_pod(self, kind: str, obj: dict[str, Any]) -> None:
        name = (obj.get("metadata") or {}).get("name")
        if not name:
            return
        if kind != "DELETED" or name not in self.pods:
            self.pods[name] = obj  # a deleted pod keeps its last state (its exit code)
        if name not in self._followers and pod_loggable(obj) and not self._ended.is_set():
            self._followers[name] = asyncio.create_task(self._follow(name, pod_rank(obj)))
        self._changed.set()

    # -- logs ---------------------------------------------------------------------------------

    async def _follow(self, pod: str, rank: int) -> None:
        """The pod's log from the start (less what a previous executor shipped) until it ends."""
        prefix = f"[rank {rank}] " if self.gang else ""
        on_line = self.on_line

        async def sink(stream: str, line: str) -> None:
            await on_line(stream, prefix + line)

        splitter = LineSplitter("stdout", sink)  # the API merges stdout and stderr
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        already = self._skip.get(pod, 0)

        def open_log() -> Any:
            """The follow request; None once the attempt ended or the pod is gone."""
            while True:
                try:
                    return self.backend.core.read_namespaced_pod_log(
                        pod,
                        self.backend.options.namespace,
                        container=CONTAINER,
                        follow=True,
                        _preload_content=False,
                        _request_timeout=(10, LOG_IDLE_S),
                    )
                except ApiException as exc:
                    # 400: the container is not up yet; 404: the pod is gone
                    if exc.status == 404 or self._ended.wait(LOG_RETRY_S):
                        return None

        def stream() -> None:
            skip = already  # bytes handed on before (by a previous executor, or a dropped stream)
            try:
                while (resp := open_log()) is not None:
                    self._responses.append(resp)
                    seen = 0  # every request reads the log from its start
                    try:
                        for chunk in resp.stream(64 * 1024):
                            if seen + len(chunk) > skip:
                                loop.call_soon_threadsafe(chunks.put_nowait, chunk[max(0, skip - seen) :])
                            seen += len(chunk)
                        return  # the container exited: its log is whole
                    except Exception as exc:
                        # silent for LOG_IDLE_S, or the connection dropped: ask again, skip what came
                        if self._ended.is_set():
                            return
                        log.debug("log stream resumes", extra={"pod": pod, "error": _explain(exc)})
                        skip = max(skip, seen)
                    finally:
                        with contextlib.suppress(ValueError):
                            self._responses.remove(resp)
            except RuntimeError:  # the loop closed: nobody is listening
                pass
            finally:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(chunks.put_nowait, None)

        threading.Thread(target=stream, name=f"logs-{pod}", daemon=True).start()
        while (chunk := await chunks.get()) is not None:
            self._consumed[pod] = self._consumed.get(pod, 0) + len(chunk)
            await splitter.feed(chunk)
        await splitter.end()

    async def _drain(self) -> None:
        """Every line up to the end; a stream that does not end by itself is closed."""
        self._ended.set()
        followers = list(self._followers.values())
        if not followers:
            return
        _, pending = await asyncio.wait(followers, timeout=LOG_DRAIN_S)
        if pending:
            for resp in list(self._responses):
                with contextlib.suppress(Exception):
                    resp.close()
            await asyncio.wait(pending, timeout=LOG_DRAIN_S)
            for task in pending:
                task.cancel()

    async def _keep_cursor(self) -> None:
        """How far each pod's log has been handed on, one period behind (the last period's lines
        may sit in the shipper's batch: after a crash they are sent again rather than lost)."""
        shipped = dict(self._consumed)
        while True:
            await asyncio.sleep(CURSOR_EVERY_S)
            self._write_cursor(shipped)
            shipped = dict(self._consumed)

    def _write_cursor(self, consumed: Mapping[str, int]) -> None:
        with contextlib.suppress(OSError):
            self._cursor_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._cursor_path.with_name(self._cursor_path.name + ".tmp")
            tmp.write_text(json.dumps(dict(consumed)))
            os.replace(tmp, self._cursor_path)

    # -- the protocol -------------------------------------------------------------------------

    def _deadline(self) -> float | None:
        """When this executor stops the Job itself: the cluster's activeDeadlineSeconds should
        have ended it by then (the slack covers a slow controller)."""
        if self._stop_deadline is not None:
            return self._stop_deadline
        if self.launch.timeout_s is None:
            return None
        return self.started_at + self.launch.timeout_s + self.launch.grace_s + self.backend.deadline_slack_s

    async def wait(self) -> AttemptOutcome:
        try:
            outcome = await self._wait()
        finally:
            for w in self._watches:
                w.stop()
            await self._drain()
            self._cursor_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cursor_task
            self._write_cursor(self._consumed)
        self._outcome_kind = outcome.kind
        return outcome

    async def _wait(self) -> AttemptOutcome:
        refreshed = False
        while True:
            outcome = self._verdict()
            if outcome is not None:
                if not refreshed:
                    # the Job's condition may come before its pods' last state (their exit codes,
                    # a pod whose log is not followed yet): read them once, then decide again
                    refreshed = True
                    await self._refresh_pods()
                    continue
                if self._stuck:  # the Job would wait for its deadline: end it now
                    await self._delete(0.0)
                return outcome
            deadline = self._deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                if self._stop_deadline is not None:
                    return self._stopped_outcome()  # deleted, but no word of it: stop waiting
                self._timed_out = True
                await self._delete(self.launch.grace_s)

    def _verdict(self) -> AttemptOutcome | None:
        out = self.output_dir
        if self._cancelled or self._timed_out:
            return self._stopped_outcome() if self.job_gone else None
        end = job_end(self.job) if self.job is not None else None
        exit_ = deciding_exit(self.pods.values())
        if end is not None and end.kind == "succeeded":
            return AttemptOutcome("succeeded", 0, "exit code 0", out)
        if end is not None and end.kind == "timed_out":
            code = exit_.exit_code if exit_ else None
            return AttemptOutcome("timed_out", code, f"timed out after {self.launch.timeout_s or 0:g}s", out)
        if end is not None:
            code = exit_.exit_code if exit_ else None
            return AttemptOutcome(
                "failed", code, failure_reason(end, exit_, self.gang, self.launch.memory_mb), out
            )
        for pod in self.pods.values():
            if (stuck := pod_stuck(pod)) is not None:
                self._stuck = True
                return AttemptOutcome("failed", None, f"could not start: {stuck}", out)
        if self.job_gone:
            return AttemptOutcome("failed", None, f"the Job {self.name} was deleted outside Trainyard", out)
        return None

    def _stopped_outcome(self) -> AttemptOutcome:
        exit_ = deciding_exit(self.pods.values())
        code = exit_.exit_code if exit_ else None
        if self._timed_out:
            return AttemptOutcome(
                "timed_out", code, f"timed out after {self.launch.timeout_s or 0:g}s", self.output_dir
            )
        return AttemptOutcome("cancelled", code, "cancelled", self.output_dir)

    async def _refresh_pods(self) -> None:
        try:
            pods = await in_thread(self.backend.list_pods, self.launch.job_id, self.launch.attempt)
        except Exception as exc:
            log.debug("could not list pods", extra={"job": self.name, "error": _explain(exc)})
            return
        for pod in pods:
            self._on_pod("MODIFIED", pod)

    async def cancel(self, grace_s: float | None = None) -> None:
        self._cancelled = True
        await self._delete(self.launch.grace_s if grace_s is None else grace_s)

    async def _delete(self, grace_s: float) -> None:
        """Delete the Job (its pods get SIGTERM, then SIGKILL after the grace) and its Service."""
        if self._stop_deadline is None:
            self._stop_deadline = time.time() + grace_s + self.backend.deadline_slack_s
        try:
            gone = await in_thread(self.backend.delete_attempt, self.name, grace_s, "Foreground")
        except Exception as exc:
            log.warning("could not delete a Job", extra={"job": self.name, "error": _explain(exc)})
            return
        if gone:
            self.job_gone = True
        self._changed.set()

    async def release(self) -> None:
        """The outcome is recorded: remove the Job (a failed one stays if so configured)."""
        if self._outcome_kind in ("succeeded", "cancelled") or not self.backend.keep_failed:
            with contextlib.suppress(Exception):
                await in_thread(self.backend.delete_attempt, self.name, 0.0, "Background")

    async def detach(self) -> None:
        """Stop following; leave the Job running for the next executor to adopt."""
        for w in self._watches:
            w.stop()
        self._ended.set()
        for resp in list(self._responses):
            with contextlib.suppress(Exception):
                resp.close()
        self._cursor_task.cancel()
        for task in self._followers.values():
            task.cancel()
        await asyncio.gather(self._cursor_task, *self._followers.values(), return_exceptions=True)
        self._write_cursor(self._consumed)


class KubernetesBackend:
    """Attempts as Jobs in one namespace of a cluster this executor does not own."""

    name = "kubernetes"

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
    ) -> None:
        self._factory = api_client_factory
        self._api: k8s.ApiClient | None = None
        self._lock = threading.Lock()
        self.options = options
        self._capacity = capacity
        self.outputs_mount = outputs_mount
        self.keep_failed = keep_failed
        self.deadline_slack_s = deadline_slack_s
        self.watch_idle_s = watch_idle_s

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

    def capacity(self) -> Resources:
        """The pool's quota as configured: the cluster's nodes are shared, not this executor's."""
        return self._capacity

    def _raw(self, model: Any) -> dict[str, Any]:
        return self.api.sanitize_for_serialization(model)  # type: ignore[no-any-return,no-untyped-call]

    # -- starting -----------------------------------------------------------------------------

    def output_dir(self, launch: AttemptLaunch) -> Path:
        """Where this executor sees the attempt's outputs: on the shared claim when it mounts it,
        else the local work dir (the pod's outputs then stay in the pod)."""
        if self.outputs_mount is not None and self.options.outputs_claim:
            return self.outputs_mount / "outputs" / launch.job_id / f"attempt-{launch.attempt}"
        return launch.workdir / launch.output_subdir

    async def start(self, launch: AttemptLaunch, on_line: LineSink) -> KubeAttempt | FinishedAttempt:
        output_dir = self.output_dir(launch)
        try:
            launch.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return FinishedAttempt(f"could not prepare the work dir: {exc}", output_dir)
        if launch.runtime_pip:
            return FinishedAttempt(
                "runtime_env.pip is not supported by the kubernetes backend: "
                "install the packages in the image",
                output_dir,
            )
        started_at = time.time()
        try:
            manifest = job_manifest(
                launch, self.options, HOST_ONLY_ENV, output_dir=str(output_dir), started_at=started_at
            )
        except (GangSplitError, ValueError) as exc:
            return FinishedAttempt(str(exc), output_dir)
        try:
            job = await in_thread(self._create, manifest, name=f"create-{launch.job_id}")
        except _NotOurs as exc:
            return FinishedAttempt(str(exc), output_dir)
        except Exception as exc:
            return FinishedAttempt(f"could not create the Job: {_explain(exc)}", output_dir)
        annotations = job["metadata"].get("annotations") or {}
        return KubeAttempt(
            self,
            job["metadata"]["name"],
            launch,
            output_dir,
            on_line,
            world_size=int(annotations.get(ANNOT_WORLD) or 1),
            started_at=float(annotations.get(ANNOT_STARTED) or started_at),
            skip=_read_cursor(launch.workdir),
        )

    def _create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create the Job (and a gang's Service). A Job of this very attempt that exists already
        (a redelivered start, a restart between create and record) is attached to, never doubled."""
        ns = self.options.namespace
        name = manifest["metadata"]["name"]
        try:
            job = self._raw(self.batch.create_namespaced_job(ns, manifest))  # type: ignore[arg-type]
        except ApiException as exc:
            if exc.status != 409:
                raise
            job = self._raw(self.batch.read_namespaced_job(name, ns))
            owner = ((job.get("metadata") or {}).get("labels") or {}).get(LABEL_EXECUTOR)
            if owner != manifest["metadata"]["labels"][LABEL_EXECUTOR]:
                raise _NotOurs(f"a Job named {name} exists and belongs to executor {owner!r}") from exc
            log.warning("attached to the existing Job of this attempt", extra={"job": name})
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

    def _create_gang_object(self, create: Callable[..., Any], body: dict[str, Any]) -> None:
        """One of a gang's companions (its Service, its NetworkPolicy); one that exists is this
        attempt's own (same name), from an earlier start."""
        try:
            create(self.options.namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    # -- blocking helpers (threads) -----------------------------------------------------------

    def list_pods(self, job_id: str, attempt: int) -> list[dict[str, Any]]:
        pods = self.core.list_namespaced_pod(
            self.options.namespace, label_selector=attempt_selector(job_id, attempt)
        )
        want = {LABEL_JOB: label_value(job_id), LABEL_ATTEMPT: str(attempt)}
        return [p for p in (self._raw(i) for i in pods.items) if _matches(p, want)]

    def delete_attempt(self, name: str, grace_s: float, propagation: str) -> bool:
        """Delete a Job (pods after their grace) and its Service; True if the Job is gone now."""
        ns = self.options.namespace
        grace = max(0, math.ceil(grace_s))
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_service(name, ns)
        with contextlib.suppress(ApiException):
            self.networking.delete_namespaced_network_policy(name, ns)
        try:
            self.batch.delete_namespaced_job(
                name, ns, propagation_policy=propagation, grace_period_seconds=grace
            )
            # Foreground: the Job stays (with a deletionTimestamp) until its pods are gone
            self.batch.read_namespaced_job(name, ns)
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
        return [j for j in (self._raw(i) for i in jobs.items) if _matches(j, want)]

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
        job = self._raw(await in_thread(self.batch.read_namespaced_job, found.ref, self.options.namespace))
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
            log.warning("could not delete a stale Job", extra={"job": found.ref, "error": _explain(exc)})


class _NotOurs(RuntimeError):
    pass


def _read_cursor(workdir: Path) -> dict[str, int]:
    try:
        data = json.loads((workdir / META_DIR / CURSOR_FILE).read_text())
        return {str(k): int(v) for k, v in data.items()}
    except (OSError, ValueError, AttributeError):
        return {}


def kubernetes_backend(settings: Any, data: Path) -> KubernetesBackend:
    """The backend of TRAINYARD_EXECUTOR_BACKEND=kubernetes, from the executor's settings."""
    if settings.cpu is None or settings.memory is None:
        raise ValueError(
            "the kubernetes backend advertises the pool's quota, not a machine's: set "
            "TRAINYARD_EXECUTOR_CPU and TRAINYARD_EXECUTOR_MEMORY (and TRAINYARD_EXECUTOR_GPU)"
        )
    options = KubeOptions(
        namespace=settings.kube_namespace,
        executor_id=settings.id,
        default_image=settings.default_image,
        ttl_seconds=settings.kube_ttl_seconds,
        run_as_user=settings.kube_run_as_user or None,
        outputs_claim=settings.kube_outputs_claim,
        automount_token=settings.kube_automount_token,
    )
    return KubernetesBackend(
        lambda: api_client_from_config(settings.kube_context),
        options,
        Resources(cpu=float(settings.cpu), memory_mb=int(settings.memory), gpu=int(settings.gpu or 0)),
        outputs_mount=settings.kube_outputs_mount,
        keep_failed=settings.keep_failed_containers,
    )


__all__ = ["KubeAttempt", "KubernetesBackend", "api_client_from_config", "job_name", "kubernetes_backend"]
