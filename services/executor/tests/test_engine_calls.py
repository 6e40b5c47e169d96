"""A loaded engine must not turn into failed attempts (issue 23): the container backends' creates
and starts, a gang's network create and the removes at release are bounded per executor, retried
when they time out, and idempotent.

The engine is real (Docker, and Podman through its Docker API). What makes it "slow" is an honest
stand-in: a small unix-socket proxy, in this file, in front of the engine's real socket. It passes
every byte through and parses only the requests, so it can (a) count the creates and starts in
flight at the engine (sent, no answer yet), (b) withhold the answer to the first create or start
after the engine has done it, until the client gives up on it (its read timeout closes the
connection) — exactly what a loaded engine answering after the timeout looks like — and (c)
swallow a kind of request altogether, or only its first (an engine that never answers).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from trainyard_executor.backends.container_gang import GangAttempt
from trainyard_executor.backends.docker import (
    LABEL_EXECUTOR,
    LABEL_JOB,
    DockerBackend,
    image_missing_reason,
)
from trainyard_executor.backends.engine_calls import EngineCallPolicy, has_started, transient
from trainyard_executor.backends.gang_network import network_name, prune_networks
from trainyard_executor.core import free_loopback_port
from trainyard_executor.jobenv import plan_gang
from trainyard_executor.testengines import ENGINE_URLS, Lines, make_launch

pytest_plugins = ["trainyard_executor.testengines"]  # the engine fixture

WATCHED = ("create", "start", "network", "remove", "network remove")


def request_kind(head: bytes) -> str:
    method, path = head.split(b" ", 2)[:2]
    path = path.split(b"?", 1)[0]
    if method == b"POST" and path.endswith(b"/containers/create"):
        return "create"
    if method == b"POST" and path.endswith(b"/start") and b"/containers/" in path:
        return "start"
    if method == b"GET" and b"/images/" in path and path.endswith(b"/json"):
        return "image"
    if method == b"POST" and path.endswith(b"/networks/create"):
        return "network"
    if method == b"DELETE" and b"/containers/" in path:
        return "remove"
    if method == b"DELETE" and b"/networks/" in path:
        return "network remove"
    return "other"


class EngineProxy:
    """A pass-through unix-socket proxy to an engine that counts, withholds or swallows requests."""

    def __init__(self, upstream: str, listen: str) -> None:
        self.upstream = upstream
        self.listen = listen
        self.drop_first: set[str] = set()  # the first answer of these kinds is withheld
        self.swallow: set[str] = set()  # requests of these kinds never reach the engine
        self.swallow_first: set[str] = set()  # the first request of these kinds never reaches it
        self.forwarded: Counter[str] = Counter()
        self.statuses: dict[str, list[int]] = {kind: [] for kind in WATCHED}
        self.in_flight = 0
        self.max_in_flight = 0
        self._dropped: set[str] = set()
        self._lock = threading.Lock()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(listen)
        self._server.listen(256)
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="engine-proxy").start()

    def close(self) -> None:
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                with_no_error(sock.close)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.upstream)
            with self._lock:
                self._sockets += [client, upstream]
            conn: dict[str, Any] = {"pending": None, "withhold": False, "closed": threading.Event()}
            threading.Thread(target=self._requests, args=(client, upstream, conn), daemon=True).start()
            threading.Thread(target=self._answers, args=(client, upstream, conn), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, conn: dict[str, Any]) -> None:
        """Client to engine, one whole request at a time (docker-py sends Content-Length bodies)."""
        buf = b""
        try:
            while True:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    data = client.recv(65536)
                    if not data:
                        return
                    buf += data
                    continue
                head = buf[:end]
                assert b"chunked" not in head.lower(), "the proxy handles Content-Length bodies only"
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < end + 4 + length:
                    data = client.recv(65536)
                    if not data:
                        return
                    buf += data
                request, buf = buf[: end + 4 + length], buf[end + 4 + length :]
                if not self._admit(request_kind(head), conn):
                    continue  # swallowed: the client waits until its read timeout
                upstream.sendall(request)
        except OSError:
            return
        finally:
            conn["closed"].set()
            with_no_error(upstream.shutdown, socket.SHUT_RDWR)

    def _admit(self, kind: str, conn: dict[str, Any]) -> bool:
        with self._lock:
            self.forwarded[kind] += 1
            if kind in self.swallow:
                return False
            if kind in self.swallow_first:
                self.swallow_first.discard(kind)
                return False
            if kind in self.drop_first and kind not in self._dropped:
                self._dropped.add(kind)
                conn["withhold"] = True
            if kind in WATCHED:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            conn["pending"] = kind  # the next bytes from the engine begin its answer
        return True

    def _answers(self, client: socket.socket, upstream: socket.socket, conn: dict[str, Any]) -> None:
        """Engine to client, byte for byte (a withheld answer: until the client gives up)."""
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    return
                with self._lock:
                    kind, conn["pending"] = conn["pending"], None
                    if kind in WATCHED:
                        self.in_flight -= 1
                        self.statuses[kind].append(int(data.split(b" ", 2)[1]))
                    withhold = conn["withhold"]
                if withhold:
                    conn["closed"].wait()  # the client's read timeout closed the connection
                    return
                client.sendall(data)
        except OSError:
            return
        finally:
            with_no_error(client.shutdown, socket.SHUT_RDWR)


def with_no_error(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except OSError:
        pass


def engine_socket(engine: str) -> str:
    url = ENGINE_URLS[engine] or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    assert url.startswith("unix://"), f"the proxy speaks unix sockets only, not {url}"
    return url.removeprefix("unix://")


@pytest.fixture
def proxy(engine: str) -> Iterator[EngineProxy]:
    folder = tempfile.mkdtemp(prefix="ty-engine-", dir="/tmp")  # a socket path has ~100 bytes
    proxy = EngineProxy(engine_socket(engine), f"{folder}/engine.sock")
    yield proxy
    proxy.close()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def slow_backend(engine: str, proxy: EngineProxy) -> Iterator[DockerBackend]:
    """The engine through the proxy, with a short read timeout (what the proxy withholds ends it)."""
    policy = EngineCallPolicy(concurrency=2, call_timeout_s=10.0, start_deadline_s=120.0, backoff_first_s=0.1)
    backend = DockerBackend(
        base_url=f"unix://{proxy.listen}",
        name=engine,
        executor_id=f"test-{uuid.uuid4().hex[:8]}",
        engine_calls=policy,
    )
    yield backend
    for left in backend.list_running(include_stopped=True):
        backend.client.api.remove_container(left.container_id, force=True)
    prune_networks(backend.client, f"{LABEL_EXECUTOR}={backend.executor_id}")  # after a failed test


def containers_of(backend: DockerBackend, job_id: str) -> list[Any]:
    return backend.client.containers.list(all=True, filters={"label": [f"{LABEL_JOB}={job_id}"]})


async def test_a_create_answered_after_the_read_timeout_is_retried_and_makes_one_container(
    slow_backend, proxy, tmp_path
):
    proxy.drop_first = {"create"}
    launch = make_launch(tmp_path, ["echo", "ran"])
    lines = Lines()
    attempt = await slow_backend.start(launch, lines)
    assert not hasattr(attempt, "reason"), getattr(attempt, "reason", None)  # not a FinishedAttempt
    outcome = await attempt.wait()
    assert (outcome.kind, outcome.reason) == ("succeeded", "exit code 0"), (outcome.reason, lines.got)
    assert lines.of("stdout") == ["ran"]
    # the engine made the container of the unanswered create; the retry found it (a name in use)
    # and reused it: one container, made once
    assert proxy.forwarded["create"] >= 2
    assert proxy.statuses["create"].count(201) == 1, proxy.statuses
    assert [c.id for c in containers_of(slow_backend, launch.job_id)] == [attempt.container_id]
    await attempt.release()
    assert containers_of(slow_backend, launch.job_id) == []


async def test_a_start_answered_after_the_read_timeout_is_not_repeated(slow_backend, proxy, tmp_path):
    proxy.drop_first = {"start"}
    launch = make_launch(tmp_path, ["echo", "once"])
    lines = Lines()
    attempt = await slow_backend.start(launch, lines)
    assert not hasattr(attempt, "reason"), getattr(attempt, "reason", None)
    outcome = await attempt.wait()
    assert outcome.kind == "succeeded", (outcome.reason, lines.got)
    # the engine started it (and the job may have ended) before the answer was lost: asking
    # "start" again would have run the job a second time
    assert proxy.forwarded["start"] == 1
    assert lines.of("stdout") == ["once"]
    assert len(containers_of(slow_backend, launch.job_id)) == 1
    await attempt.release()


async def test_a_drain_never_has_more_creates_and_starts_in_flight_than_the_bound(
    slow_backend, proxy, tmp_path
):
    launches = [make_launch(tmp_path, ["true"]) for _ in range(10)]
    attempts = await asyncio.gather(*(slow_backend.start(launch, Lines()) for launch in launches))
    outcomes = await asyncio.gather(*(attempt.wait() for attempt in attempts))
    assert [o.kind for o in outcomes] == ["succeeded"] * 10, [o.reason for o in outcomes]
    assert proxy.forwarded["create"] == 10 and proxy.forwarded["start"] == 10
    assert 1 <= proxy.max_in_flight <= slow_backend.starts.policy.concurrency == 2
    await asyncio.gather(*(attempt.release() for attempt in attempts))


async def test_a_definite_error_fails_at_once_without_retries(slow_backend, proxy, tmp_path):
    missing = make_launch(tmp_path, ["true"], image="trainyard-test/no-such-image:0")
    outcome = await (await slow_backend.start(missing, Lines())).wait()
    assert (outcome.kind, outcome.reason) == (
        "failed",
        image_missing_reason("trainyard-test/no-such-image:0"),
    )
    assert proxy.forwarded["image"] == 1 and proxy.forwarded["create"] == 0
    # a spec the engine refuses at start: no init, a program the image lacks
    slow_backend.init = False
    refused = make_launch(tmp_path, ["/no/such/program"])
    outcome = await (await slow_backend.start(refused, Lines())).wait()
    assert outcome.kind == "failed" and outcome.reason.startswith("could not start the container:")
    assert "/no/such/program" in outcome.reason, outcome.reason
    assert proxy.forwarded["start"] == 1
    assert containers_of(slow_backend, refused.job_id) == []  # removed again


async def test_an_engine_that_never_answers_fails_the_start_by_its_deadline_naming_the_call(
    engine, proxy, tmp_path
):
    proxy.swallow = {"create"}
    policy = EngineCallPolicy(concurrency=1, call_timeout_s=1.0, start_deadline_s=3.0, backoff_first_s=0.1)
    # the API version given: a client made without it asks the engine first (answered, but maybe
    # not within 1 s on a loaded machine, which would end the start on 'connect', not 'create')
    url = f"unix://{proxy.listen}"
    client = lambda: docker.DockerClient(base_url=url, version="1.41", timeout=1.0)  # noqa: E731
    backend = DockerBackend(client, name=engine, engine_calls=policy)
    launch = make_launch(tmp_path, ["true"])
    outcome = await (await backend.start(launch, Lines())).wait()
    assert outcome.kind == "failed"
    assert "the engine call 'create' failed" in outcome.reason and "start deadline of 3s" in outcome.reason
    assert proxy.forwarded["create"] >= 2  # asked again before the deadline
    assert containers_of(backend, launch.job_id) == []


def networks_named(backend: DockerBackend, name: str) -> list[Any]:
    return [n for n in backend.client.networks.list(names=[name]) if n.name == name]


# rank 0 lives until rank 1 runs: its address on the gang's network is read after it started,
# and a container that has exited has none
RANK_0_WAITS = (
    'if [ "$RANK" = 0 ]; then i=0; while [ ! -f "$TRAINYARD_OUTPUT_DIR/up" ] && [ $i -lt 600 ];'
    ' do sleep 0.1; i=$((i+1)); done; else touch "$TRAINYARD_OUTPUT_DIR/up"; fi; echo "rank $RANK"'
)


def gang_launch(tmp_path: Any) -> Any:
    return make_launch(tmp_path, ["sh", "-c", RANK_0_WAITS], gang=plan_gang(2, None, free_loopback_port))


@pytest.mark.distributed
async def test_a_gang_network_create_answered_after_the_read_timeout_is_found_and_reused(
    slow_backend, proxy, tmp_path
):
    proxy.drop_first = {"network"}
    launch = gang_launch(tmp_path)
    lines = Lines()
    attempt = await slow_backend.start(launch, lines)
    assert isinstance(attempt, GangAttempt), attempt.outcome.reason
    outcome = await attempt.wait()
    assert outcome.kind == "succeeded", (outcome.reason, lines.got)
    assert sorted(lines.of("stdout")) == ["[rank 0] rank 0", "[rank 1] rank 1"]
    # the engine made the network of the unanswered create; the retry found it by its name and
    # labels and made no other
    name = network_name(launch.job_id, launch.attempt)
    assert proxy.statuses["network"] == [201] and len(networks_named(slow_backend, name)) == 1
    await attempt.release()
    assert networks_named(slow_backend, name) == []


@pytest.mark.distributed
async def test_a_network_by_the_attempts_name_that_is_not_its_own_is_refused_and_left(
    slow_backend, proxy, tmp_path
):
    launch = gang_launch(tmp_path)
    name = network_name(launch.job_id, launch.attempt)
    foreign = slow_backend.client.networks.create(name, driver="bridge", labels={"someone": "else"})
    try:
        outcome = await (await slow_backend.start(launch, Lines())).wait()
        assert outcome.kind == "failed"
        assert f"network {name} exists and is not this attempt's" in outcome.reason, outcome.reason
        assert proxy.forwarded["create"] == 0  # no rank joined it
        assert [n.id for n in networks_named(slow_backend, name)] == [foreign.id]  # not removed
    finally:
        foreign.remove()


@pytest.mark.distributed
@pytest.mark.parametrize("lost", ["request", "answer"])
async def test_a_remove_at_release_that_times_out_is_asked_again_until_the_container_is_gone(
    slow_backend, proxy, tmp_path, lost
):
    """``request``: the engine never got the first remove (the retry removes the container);
    ``answer``: it removed it, the answer was lost (the retry's "no such container" is done)."""
    launch = gang_launch(tmp_path)
    attempt = await slow_backend.start(launch, Lines())
    assert isinstance(attempt, GangAttempt), attempt.outcome.reason
    assert (await attempt.wait()).kind == "succeeded"
    if lost == "request":
        proxy.swallow_first = {"remove"}
    else:
        proxy.drop_first = {"remove"}
    await attempt.release()
    assert containers_of(slow_backend, launch.job_id) == []
    assert proxy.forwarded["remove"] == 3  # two ranks, one asked again
    assert networks_named(slow_backend, network_name(launch.job_id, launch.attempt)) == []


@pytest.mark.distributed
async def test_gangs_started_and_released_together_keep_every_engine_call_within_the_bound(
    slow_backend, proxy, tmp_path
):
    launches = [gang_launch(tmp_path) for _ in range(4)]
    attempts = await asyncio.gather(*(slow_backend.start(launch, Lines()) for launch in launches))
    outcomes = await asyncio.gather(*(attempt.wait() for attempt in attempts))
    assert [o.kind for o in outcomes] == ["succeeded"] * 4, [o.reason for o in outcomes]
    await asyncio.gather(*(attempt.release() for attempt in attempts))
    assert proxy.forwarded["network"] == 4 and proxy.forwarded["remove"] == 8
    assert proxy.forwarded["network remove"] == 4
    assert 1 <= proxy.max_in_flight <= slow_backend.starts.policy.concurrency == 2
    assert all(containers_of(slow_backend, launch.job_id) == [] for launch in launches)


@pytest.mark.unit
def test_what_is_asked_again_and_what_is_not():
    import requests
    from docker.errors import APIError, DockerException, ImageNotFound

    def api_error(status: int, explanation: str) -> APIError:
        response = requests.Response()
        response.status_code = status
        return APIError("engine", response=response, explanation=explanation)

    assert transient(requests.exceptions.ReadTimeout("Read timed out. (read timeout=60)"))
    assert transient(requests.exceptions.ConnectionError("Connection reset by peer"))
    assert transient(api_error(500, "context deadline exceeded"))
    assert transient(api_error(503, "busy"))
    try:  # what docker.DockerClient raises when the engine does not answer its version in time
        raise DockerException("Error while fetching server API version: ...") from requests.ReadTimeout()
    except DockerException as exc:
        assert transient(exc)
    assert not transient(DockerException("no DOCKER_HOST"))
    assert not transient(api_error(500, "container name /x is already in use"))
    assert not transient(api_error(500, 'OCI runtime create failed: exec: "x": executable file not found'))
    assert not transient(api_error(400, "invalid reference format"))
    assert not transient(ImageNotFound("no such image"))
    assert not has_started({"State": {"Running": False, "StartedAt": "0001-01-01T00:00:00Z"}})
    assert has_started({"State": {"Running": False, "StartedAt": "2026-12-04T18:00:00.1Z"}})
    assert has_started({"State": {"Running": True}})
    with pytest.raises(ValueError, match="at least 1"):
        DockerBackend(client_factory=lambda: None, engine_calls=EngineCallPolicy(concurrency=0))
