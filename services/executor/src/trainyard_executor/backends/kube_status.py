"""Reading an attempt's end from its Job and pods (pure: API dicts in, verdicts out).

The Job's conditions decide *whether* and *how* it ended (``Complete``; ``Failed`` with reason
``DeadlineExceeded`` = timed out); the pods' container states give the exit code and why
(``OOMKilled``). A pod that cannot start at all (image not found, bad config) never reaches a
condition before the deadline, so it ends the attempt as well.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from trainyard_executor.backends.kube_manifests import COMPLETION_INDEX_ANNOT, CONTAINER

# waiting reasons that do not heal by waiting (ErrImagePull may; its back-off state is final enough)
STUCK_REASONS = frozenset(
    {"ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError"}
)


@dataclass(frozen=True)
class JobEnd:
    kind: str
    """succeeded | failed | timed_out"""
    reason: str
    """The condition's reason (Complete, DeadlineExceeded, BackoffLimitExceeded, ...)."""
    message: str = ""


@dataclass(frozen=True)
class PodExit:
    rank: int
    exit_code: int
    reason: str
    """The container's terminated reason: Completed, Error, OOMKilled, ..."""
    message: str = ""


def job_end(job: Mapping[str, Any]) -> JobEnd | None:
    """The Job's terminal condition, if it has one (interim ones such as FailureTarget are not)."""
    for cond in (job.get("status") or {}).get("conditions") or ():
        if cond.get("status") != "True":
            continue
        reason = cond.get("reason") or cond.get("type") or ""
        message = cond.get("message") or ""
        if cond.get("type") == "Complete":
            return JobEnd("succeeded", reason or "Complete", message)
        if cond.get("type") == "Failed":
            kind = "timed_out" if reason == "DeadlineExceeded" else "failed"
            return JobEnd(kind, reason, message)
    return None


def pod_rank(pod: Mapping[str, Any]) -> int:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    try:
        return int(annotations.get(COMPLETION_INDEX_ANNOT, 0))
    except (TypeError, ValueError):
        return 0


def _job_container(pod: Mapping[str, Any], container: str) -> Mapping[str, Any] | None:
    statuses: list[Mapping[str, Any]] = (pod.get("status") or {}).get("containerStatuses") or []
    for status in statuses:
        if status.get("name") == container:
            return status
    return None


def pod_exit(pod: Mapping[str, Any], container: str = CONTAINER) -> PodExit | None:
    """The job container's exit, once it terminated (``container``: its name in the pod)."""
    status = _job_container(pod, container)
    if status is None:
        return None
    terminated = (status.get("state") or {}).get("terminated")
    if not terminated:
        return None
    return PodExit(
        rank=pod_rank(pod),
        exit_code=int(terminated.get("exitCode", -1)),
        reason=terminated.get("reason") or "",
        message=terminated.get("message") or "",
    )


# the digest at the end of a container status's imageID: ``sha256:<hex>`` (an image the node has
# only locally), ``<repo>@sha256:<hex>`` (containerd, CRI-O), ``docker-pullable://<repo>@sha256:<hex>``
_IMAGE_DIGEST = re.compile(r"(?:^|[@/])(sha256:[0-9a-f]{64})$")


def image_digest(pods: Iterable[Mapping[str, Any]], container: str = CONTAINER) -> str | None:
    """The image the job container ran, by content: the ``sha256:`` digest of its status's
    ``imageID``, which the kubelet sets from what the runtime resolved the tag to when the
    container was created (a tag moved since does not change it). The lowest rank that has one
    speaks for a gang (its pods are made from one template). For an image pulled from a registry it
    is the registry's manifest digest (``repo@sha256:...``, what ``image@sha256:...`` pulls again),
    for an image the node has only locally its image id, as Docker's backend reports. None when no
    pod says (a pod that never started, a runtime that leaves it empty)."""
    ranked = sorted(pods, key=pod_rank)
    for pod in ranked:
        status = _job_container(pod, container)
        found = _IMAGE_DIGEST.search(str((status or {}).get("imageID") or ""))
        if found:
            return found.group(1)
    return None


def pod_stuck(pod: Mapping[str, Any]) -> str | None:
    """Why a pod can never start (image, config), or None."""
    statuses = list((pod.get("status") or {}).get("initContainerStatuses") or ())
    statuses += list((pod.get("status") or {}).get("containerStatuses") or ())
    for status in statuses:
        waiting = (status.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS:
            detail = waiting.get("message") or ""
            return f"{status.get('name')}: {waiting['reason']}" + (f": {detail}" if detail else "")
    return None


def init_failure(pods: Iterable[Mapping[str, Any]]) -> str | None:
    """An init container that failed, so the job never ran (a clone, a fetch refused): its name,
    exit code and termination message (the fetch writes its reason there), or None."""
    for pod in sorted(pods, key=pod_rank):
        for status in (pod.get("status") or {}).get("initContainerStatuses") or ():
            terminated = (status.get("state") or {}).get("terminated") or {}
            code = terminated.get("exitCode")
            if code is not None and code != 0:
                message = str(terminated.get("message") or "").strip()[:500]
                why = f"init container {status.get('name')} failed (exit code {code})"
                return why + (f": {message}" if message else "")
    return None


def pod_loggable(pod: Mapping[str, Any], container: str = CONTAINER) -> bool:
    """The job container has started (running or ended): its log can be read."""
    status = _job_container(pod, container)
    if status is None:
        return (pod.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")
    state = status.get("state") or {}
    return bool(state.get("running") or state.get("terminated"))


def deciding_exit(pods: Iterable[Mapping[str, Any]], container: str = CONTAINER) -> PodExit | None:
    """The exit that explains the attempt: the lowest-ranked failure, else rank 0's exit."""
    exits = sorted((e for p in pods if (e := pod_exit(p, container)) is not None), key=lambda e: e.rank)
    failures = [e for e in exits if e.exit_code != 0]
    if failures:
        return failures[0]
    return exits[0] if exits else None


def failure_reason(end: JobEnd | None, exit_: PodExit | None, gang: bool, memory_mb: int) -> str:
    who = f"rank {exit_.rank} " if gang and exit_ is not None else ""
    if exit_ is not None and exit_.reason == "OOMKilled":
        limit = f" (limit {memory_mb} MiB)" if memory_mb else ""
        return f"{who}killed: out of memory{limit}, exit code {exit_.exit_code}"
    if exit_ is not None and exit_.exit_code != 0:
        reason = f"{who}exit code {exit_.exit_code}"
        if exit_.exit_code in (126, 127):
            reason += " (command not found or not executable in the image?)"
        if exit_.message:
            reason += f": {exit_.message.strip()[:200]}"
        return reason
    if end is not None:
        return f"job failed: {end.reason}" + (f": {end.message}" if end.message else "")
    return "job failed"
