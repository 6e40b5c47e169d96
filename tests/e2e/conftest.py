"""End-to-end fixtures: the built images (``make images``) started with testcontainers.

No registry is reachable here, so testcontainers' reaper (Ryuk) cannot be pulled: it is disabled and
the fixtures remove every container, network and volume they create themselves, also on failure.
This machine looks like a container to testcontainers, which would hand out the bridge gateway as
the host: ``docker_host`` mode with 127.0.0.1 makes it use the published loopback ports instead.
"""

from __future__ import annotations

import os

# before testcontainers is imported: it reads these once (see /work/shared/ENVIRONMENT.md)
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
os.environ.setdefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")

from collections.abc import Iterator

import pytest

from tests.e2e.stack import IMAGES, ImageStack

# CI insists (TRAINYARD_TEST_REQUIRE_ENGINES=docker,...): a missing engine or image fails there
REQUIRED = set(filter(None, os.environ.get("TRAINYARD_TEST_REQUIRE_ENGINES", "").split(",")))


def _not_ready() -> str:
    """'' when Docker answers and every image exists, else why the end-to-end tests cannot run."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        return f"no Docker engine reachable ({exc}); start one with scripts/engines.sh"
    try:
        missing = []
        for image in IMAGES:
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                missing.append(image)
    finally:
        client.close()
    if missing:
        return f"images missing: {', '.join(missing)}; build them with `make images`"
    return ""


@pytest.fixture(scope="session")
def images_ready() -> None:
    reason = _not_ready()
    if reason and "docker" in REQUIRED:
        pytest.fail(f"END-TO-END TESTS CANNOT RUN: {reason} (TRAINYARD_TEST_REQUIRE_ENGINES has docker)")
    if reason:
        print(f"\n!!! END-TO-END TESTS SKIPPED: {reason} !!!")
        pytest.skip(f"END-TO-END TESTS SKIPPED: {reason}")


@pytest.fixture(scope="session")
def image_stack(images_ready, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageStack]:
    """NATS, MLflow and the six services from their images, for the whole session."""
    stack = ImageStack(tmp_path_factory.mktemp("e2e"))
    try:
        stack.start()
        yield stack
    finally:
        logs = stack.save_logs(tmp_path_factory.mktemp("e2e-logs"))
        print(f"\ne2e: container logs in {logs}")
        stack.close()
