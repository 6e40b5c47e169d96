"""Docker and Podman for the container backends' tests (test kit, imported by test modules).

Every engine test runs once per engine (markers ``docker`` / ``podman``) and is skipped only when
that engine cannot be reached, unless ``TRAINYARD_TEST_REQUIRE_ENGINES`` names it (CI). The test
image is a 2 MB busybox built here from Debian's busybox-static
(``services/executor/tests/images/build_busybox.sh``), built when it is missing. An installed module,
so tests in any folder use the same fixtures (import ``engine`` and ``backend`` into the module).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from docker.errors import ImageNotFound, NotFound

from trainyard_executor.backends.base import AttemptLaunch
from trainyard_executor.backends.docker import DockerBackend

IMAGE = "trainyard-test/busybox:1"
BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "tests" / "images" / "build_busybox.sh"
ENGINE_URLS = {
    "docker": os.environ.get("TRAINYARD_TEST_DOCKER_HOST"),  # None: DOCKER_HOST or the local socket
    "podman": os.environ.get("TRAINYARD_TEST_PODMAN_SOCKET", "unix:///run/podman/podman.sock"),
}
# CI may insist (TRAINYARD_TEST_REQUIRE_ENGINES=docker,podman): then an unreachable engine fails
REQUIRED = set(filter(None, os.environ.get("TRAINYARD_TEST_REQUIRE_ENGINES", "").split(",")))
_ready: dict[str, str] = {}  # engine -> "" when usable, else why it is skipped


def engine_ready(engine: str) -> str:
    """'' when the engine answers and has the test image (built here if missing), else a reason."""
    if engine in _ready:
        return _ready[engine]
    url = ENGINE_URLS[engine]
    backend = DockerBackend(base_url=url, name=engine)
    try:
        backend.client.ping()
    except Exception as exc:
        _ready[engine] = f"{engine} engine not reachable at {url or 'DOCKER_HOST/default socket'}: {exc}"
        return _ready[engine]
    try:
        backend.client.images.get(IMAGE)
    except ImageNotFound:
        env = dict(os.environ, IMAGE=IMAGE)
        if engine == "docker" and url:
            env["DOCKER_HOST"] = url
        # (podman: the CLI imports into the same local storage the API service serves)
        built = subprocess.run(
            ["bash", str(BUILD_SCRIPT), engine], capture_output=True, text=True, env=env, check=False
        )
        if built.returncode != 0:
            pytest.fail(f"could not build {IMAGE} for {engine}: {built.stderr or built.stdout}")
    _ready[engine] = ""
    return ""


@pytest.fixture(
    params=[
        pytest.param("docker", marks=pytest.mark.docker),
        pytest.param("podman", marks=pytest.mark.podman),
    ]
)
def engine(request: pytest.FixtureRequest) -> str:
    reason = engine_ready(request.param)
    if reason and request.param in REQUIRED:
        pytest.fail(f"{reason} (required by TRAINYARD_TEST_REQUIRE_ENGINES)")
    if reason:
        pytest.skip(reason)
    return str(request.param)


@pytest.fixture
def backend(engine: str) -> Iterator[DockerBackend]:
    backend = DockerBackend(
        base_url=ENGINE_URLS[engine], name=engine, executor_id=f"test-{uuid.uuid4().hex[:8]}"
    )
    yield backend
    for left in backend.list_running(include_stopped=True):  # only after a failed test
        backend.client.api.remove_container(left.container_id, force=True)


def make_launch(tmp_path: Path, argv: list[str], **kw: Any) -> AttemptLaunch:
    job_id = kw.pop("job_id", "job" + uuid.uuid4().hex[:12])
    defaults: dict[str, Any] = {
        "job_id": job_id,
        "attempt": 1,
        "argv": argv,
        "env": {"TRAINYARD_JOB_ID": job_id, "TRAINYARD_ATTEMPT": "1"},
        "workdir": tmp_path / "work" / job_id / "attempt-1",
        "timeout_s": None,
        "grace_s": 5.0,
        "image": IMAGE,
        "cpu": 1.0,
        "memory_mb": 64,
    }
    defaults.update(kw)
    return AttemptLaunch(**defaults)


class Lines:
    """A LineSink that keeps every line."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str]] = []

    async def __call__(self, stream: str, text: str) -> None:
        self.got.append((stream, text))

    def of(self, stream: str) -> list[str]:
        return [text for s, text in self.got if s == stream]


async def wait_until(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``cond`` until it holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def gone(backend: DockerBackend, container_id: str) -> bool:
    try:
        backend.client.containers.get(container_id)
    except NotFound:
        return True
    return False
