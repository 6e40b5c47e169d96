"""One attempt as a Kubernetes Job: its watches, its pods' logs and their cursor, its verdict and
the image it ran by content (the job container's ``imageID``: ``AttemptRuntime.image_digest``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from trainyard_contracts.records import AttemptRuntime
from trainyard_executor.backends.base import (
    AttemptLaunch,
    AttemptOutcome,
    LineSink,
)
from trainyard_executor.backends.cursor import keep_cursor
from trainyard_executor.backends.kube_manifests import (
    LABEL_ATTEMPT,
    LABEL_JOB,
    label_value,
)
from trainyard_executor.backends.kube_status import (
    deciding_exit,
    failure_reason,
    image_digest,
    init_failure,
    job_end,
    pod_loggable,
    pod_rank,
    pod_stuck,
)
from trainyard_executor.backends.kube_usage import PodMetricsReader
from trainyard_executor.backends.lines import LineSplitter, drain_pumps
from trainyard_executor.backends.threads import in_thread
from trainyard_executor.metricstream import MarkedLines, ReportBuffer

if TYPE_CHECKING:
    from trainyard_executor.backends.kubernetes import KubernetesBackend


T = TypeVar("T")
log = logging.getLogger("trainyard.executor.kubernetes")
META_DIR = ".trainyard"
CURSOR_FILE = "kube-log-cursor.json"
CURSOR_EVERY_S = 1.0
LOG_DRAIN_S = 5.0
LOG_RETRY_S = 1.0
LOG_IDLE_S = 600.0  # a follow request silent this long is made again (skipping what came)
WATCH_RETRY_S = 1.0


def api_error(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        try:
            return str(json.loads(exc.body or "{}").get("message") or exc.reason)
        except ValueError:
            return f"{exc.status} {exc.reason}"
    return str(exc) or type(exc).__name__


def has_labels(obj: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """The label selector again, on our side (an API that ignored it must not mix attempts up)."""
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


class ResourceWatch:
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
            self._watch = k8s_watch.Watch()  # type: ignore[no-untyped-call]  # the client is not annotated
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
                    if (
                        isinstance(obj, dict)
                        and event.get("type") != "ERROR"
                        and has_labels(obj, self.labels)
                    ):
                        self.loop.call_soon_threadsafe(self.on_event, str(event["type"]), obj)
            except RuntimeError:  # the loop closed: nobody is listening
                return
            except Exception as exc:
                if self._stopped.is_set():
                    return
                log.debug("watch restarts", extra={"selector": selector, "error": api_error(exc)})
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
        self._live_pods: tuple[str, ...] = ()  # pods not deleted, for the usage reader's thread
        # the pods' CPU and memory from the metrics API, read by the metrics shipper (kube_usage.py)
        self.read_usage = PodMetricsReader(
            backend.pod_metrics, lambda: self._live_pods, backend.metrics_notes
        )
        # what the job reports (trainyard.report: marked lines on its log), read by the metrics shipper
        self.reports = ReportBuffer()
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
        # the backend says which object an attempt is (a Job, a TrainJob) and how its pods are labelled
        self._pod_labels = backend.pod_labels(name, labels)
        ns = backend.options.namespace
        self._watches = [
            ResourceWatch(
                backend.attempt_list_fn,
                ns,
                labels,
                self._on_job,
                backend.watch_idle_s,
                f"watch-job-{name}",
            ),
            ResourceWatch(
                backend.core.list_namespaced_pod,
                ns,
                self._pod_labels,
                self._on_pod,
                backend.watch_idle_s,
                f"watch-pods-{name}",
            ),
        ]
        self._cursor_task = asyncio.create_task(
            keep_cursor(lambda: self._consumed, self._write_cursor, CURSOR_EVERY_S)
        )

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
        # the pods the metrics API can answer for: not deleted, not ended (metrics-server drops those)
        ended = kind == "DELETED" or (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        live = set(self._live_pods) - {name} if ended else {*self._live_pods, name}
        self._live_pods = tuple(sorted(live))  # replaced whole: the reader's thread sees one or the other
        if (
            name not in self._followers
            and pod_loggable(obj, self.backend.container)
            and not self._ended.is_set()
        ):
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
        # reports out of the log before it is split (a 1 MiB marked line is never a log line); in a
        # gang only rank 0 reports
        marked = MarkedLines(self.reports, keep=rank == 0, who=f"rank {rank}")
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
                        container=self.backend.container,
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
                        log.debug("log stream resumes", extra={"pod": pod, "error": api_error(exc)})
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
            if plain := marked.feed(chunk):
                await splitter.feed(plain)
        await splitter.feed(marked.end())
        await splitter.end()

    async def _drain(self) -> None:
        """Every line up to the end; a stream that does not end by itself is closed."""
        self._ended.set()
        await drain_pumps(list(self._followers.values()), self._responses, LOG_DRAIN_S, LOG_DRAIN_S)

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
        # what the attempt ran in, by content (lineage): the pods' last state has been read
        digest = image_digest(self.pods.values(), self.backend.container)
        return (
            dataclasses.replace(outcome, runtime=AttemptRuntime(image_digest=digest)) if digest else outcome
        )

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
        exit_ = deciding_exit(self.pods.values(), self.backend.container)
        if end is not None and end.kind == "succeeded":
            return AttemptOutcome("succeeded", 0, "exit code 0", out)
        if end is not None and end.kind == "timed_out":
            code = exit_.exit_code if exit_ else None
            return AttemptOutcome("timed_out", code, f"timed out after {self.launch.timeout_s or 0:g}s", out)
        if end is not None:
            code = exit_.exit_code if exit_ else None
            before = init_failure(self.pods.values()) if exit_ is None else None
            reason = before or failure_reason(end, exit_, self.gang, self.launch.memory_mb)
            return AttemptOutcome("failed", code, reason, out)
        for pod in self.pods.values():
            if (stuck := pod_stuck(pod)) is not None:
                self._stuck = True
                return AttemptOutcome("failed", None, f"could not start: {stuck}", out)
        if self.job_gone:
            return AttemptOutcome("failed", None, f"the Job {self.name} was deleted outside Trainyard", out)
        return None

    def _stopped_outcome(self) -> AttemptOutcome:
        exit_ = deciding_exit(self.pods.values(), self.backend.container)
        code = exit_.exit_code if exit_ else None
        if self._timed_out:
            return AttemptOutcome(
                "timed_out", code, f"timed out after {self.launch.timeout_s or 0:g}s", self.output_dir
            )
        return AttemptOutcome("cancelled", code, "cancelled", self.output_dir)

    async def _refresh_pods(self) -> None:
        try:
            pods = await in_thread(self.backend.list_pods, self._pod_labels)
        except Exception as exc:
            log.debug("could not list pods", extra={"job": self.name, "error": api_error(exc)})
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
            log.warning("could not delete a Job", extra={"job": self.name, "error": api_error(exc)})
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
