"""Making and starting a container on a loaded engine: bounded, retried, idempotent.

A drain places hundreds of attempts at once. Sent straight to the engine, every create and start
runs at the same time, the engine answers each slowly, the client's read timeout fires and the
attempt failed (issue 23: 107 of 200 on a loaded Docker). So:

- at most ``concurrency`` containers of one executor are being made and started at a time (one
  slot per container: its image check, create, start and inspect run one after another in it);
- a call that times out, loses its connection or gets a 5xx that is not a definite refusal is
  asked again, with backoff, until the start's deadline (counted from the slot, not the queue);
- the retries are idempotent: the container has the attempt's deterministic name, so a create
  whose answer was lost is found by the retry's name conflict and reused if it was never started
  (never two containers for one attempt); a start whose answer was lost is not repeated when the
  container's state says it started (a short job may already have exited: starting it again would
  run it twice);
- a definite error (image missing, a spec the engine refuses) fails at once with its message, and
  a start that runs out of time fails with one naming the engine call;
- a gang's network create and the removes at release take a slot too and are retried the same way
  (:meth:`EngineStarts.in_slot`), idempotent by what they find: a network by the attempt's name
  with its labels is reused, a remove of a container already gone is done.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
from docker.errors import APIError, DockerException

log = logging.getLogger("trainyard.executor.docker")

T = TypeVar("T")

# a 5xx with one of these is the engine's answer, not its trouble: asking again changes nothing
DEFINITE_5XX = (
    "already in use",
    "no such",
    "not found",
    "invalid",
    "executable file",
    "permission denied",
    "oci runtime",
    "exec format",
)
NEVER_STARTED = "0001-01-01"  # the engines' StartedAt of a container that never ran


@dataclass(frozen=True)
class EngineCallPolicy:
    """How the container backends make and start containers (settings ``container_engine_*``)."""

    concurrency: int = 4
    """containers being made and started at once, per executor"""
    call_timeout_s: float = 60.0
    """the read timeout of one engine call (the Docker client's own default)"""
    start_deadline_s: float = 300.0
    """one container's whole start, retries included, from the moment it got its slot"""
    backoff_first_s: float = 0.5
    backoff_max_s: float = 8.0


class AlreadyRunning(RuntimeError):
    """A container of this very attempt runs already: never run an attempt twice at once."""


class EngineCallFailed(RuntimeError):
    """An engine call kept failing transiently until the start's deadline."""


def transient(exc: BaseException) -> bool:
    """True for what asking again may cure: a timeout, a lost connection, a 5xx that is not a
    definite refusal. (docker's APIError is an HTTPError, hence an OSError: checked first.)"""
    if isinstance(exc, APIError):
        if (exc.status_code or 0) < 500:
            return False
        text = str(exc.explanation or exc).lower()
        return not any(marker in text for marker in DEFINITE_5XX)
    if isinstance(exc, DockerException):  # e.g. the client's own "Error while fetching server
        cause = exc.__cause__ or exc.__context__  # API version": as transient as what caused it
        return cause is not None and cause is not exc and transient(cause)
    return isinstance(exc, (OSError, requests.RequestException))


def name_in_use(exc: APIError) -> bool:
    # Docker answers a name in use with 409, Podman with 500 "... already in use"
    return exc.status_code == 409 or "already in use" in str(exc.explanation or "")


def has_started(attrs: Mapping[str, Any]) -> bool:
    """The container ran (or runs): starting it again would run the job twice."""
    state = attrs.get("State") or {}
    if not isinstance(state, Mapping):  # (a sparse listing's state is a string)
        return str(state) not in ("created", "configured", "")
    started_at = str(state.get("StartedAt") or "")
    return bool(state.get("Running")) or (bool(started_at) and not started_at.startswith(NEVER_STARTED))


class EngineStarts:
    """The executor's slots for making and starting containers, and the retrying calls."""

    def __init__(self, policy: EngineCallPolicy) -> None:
        if policy.concurrency < 1:
            raise ValueError(f"container engine concurrency must be at least 1, not {policy.concurrency}")
        self.policy = policy
        self._slots = threading.BoundedSemaphore(policy.concurrency)

    def create_and_start(
        self, connect: Callable[[], Any], config: Mapping[str, Any], owner: Mapping[str, str]
    ) -> Any:
        """(Blocking.) The attempt's container, made and started, inspected; in one slot.

        ``connect``: the engine's client (made on first use: it asks the engine's API version);
        ``owner``: the labels that say a container is this attempt's on this executor."""
        with self._slots:
            deadline = time.monotonic() + self.policy.start_deadline_s
            client = self.call("connect", connect, deadline)
            self.call("inspect image", lambda: client.images.get(config["image"]), deadline)
            container = self._create(client, config, owner, deadline)
            try:
                self._start(container, deadline)
            except BaseException:
                with contextlib.suppress(DockerException, OSError):
                    container.remove(force=True)
                raise
            return container

    def in_slot(
        self, what: str, connect: Callable[[], Any], fn: Callable[[Any], T], deadline_of: str = "start"
    ) -> T:
        """(Blocking.) ``fn(client)`` in one slot, asked again as :meth:`call` does, within the
        deadline of a start (``fn`` must be idempotent: it may have been done when its answer
        was lost)."""
        with self._slots:
            deadline = time.monotonic() + self.policy.start_deadline_s
            client = self.call("connect", connect, deadline, deadline_of)
            return self.call(what, lambda: fn(client), deadline, deadline_of)

    def call(self, what: str, fn: Callable[[], T], deadline: float, deadline_of: str = "start") -> T:
        """``fn()``, asked again with backoff while it fails transiently and the deadline allows
        (``deadline_of``: what the deadline is, for the message)."""
        delay = self.policy.backoff_first_s
        tries = 0
        while True:
            tries += 1
            try:
                return fn()
            except Exception as exc:
                if not transient(exc):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EngineCallFailed(
                        f"the engine call {what!r} failed {tries} time(s) within the {deadline_of} "
                        f"deadline of {self.policy.start_deadline_s:g}s "
                        f"(read timeout {self.policy.call_timeout_s:g}s); last: {exc}"
                    ) from exc
                log.info("engine call asked again", extra={"call": what, "try": tries, "error": str(exc)})
                time.sleep(min(left, delay * random.uniform(0.5, 1.0)))  # backoff, jittered
                delay = min(delay * 2, self.policy.backoff_max_s)

    def _create(
        self, client: Any, config: Mapping[str, Any], owner: Mapping[str, str], deadline: float
    ) -> Any:
        name = config["name"]
        tries = 0

        def create() -> Any:
            nonlocal tries
            tries += 1
            try:
                return client.containers.create(**config)
            except APIError as exc:
                if not name_in_use(exc):
                    raise
                old = client.containers.get(name)
                if old.status in ("running", "restarting", "paused"):
                    already = f"attempt already runs in container {old.short_id} ({name})"
                    raise AlreadyRunning(already) from exc
                labels = (old.attrs.get("Config") or {}).get("Labels") or {}
                ours = all(labels.get(key) == value for key, value in owner.items())
                if tries > 1 and ours and not has_started(old.attrs):
                    # an earlier create of this start landed but its answer was lost: that one
                    log.info(
                        "container found made by a create whose answer was lost", extra={"container": name}
                    )
                    return old
                old.remove(force=True)  # a stopped one of an earlier start of this attempt
                return client.containers.create(**config)

        return self.call("create", create, deadline)

    def _start(self, container: Any, deadline: float) -> None:
        tries = 0

        def start() -> None:
            nonlocal tries
            tries += 1
            if tries > 1:  # the previous start's answer was lost: did it start?
                container.reload()
                if has_started(container.attrs):
                    return
            container.start()

        self.call("start", start, deadline)
        self.call("inspect", container.reload, deadline)
