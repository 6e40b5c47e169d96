"""Pytest fixtures: a real nats-server on a free loopback port, and a unique subject prefix.

Enable with ``pytest_plugins = ["trainyard_shared.testing.fixtures"]`` in a conftest. One server serves the
whole session; every test gets its own prefix, so streams, buckets and subjects never collide.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from trainyard_shared.natsserver import NatsServer


def pytest_configure(config: pytest.Config) -> None:
    # the tests' git repositories are made under the temp folder (and the examples live in the
    # checkout): the session allows local sources there, as the embedded stack allows its own
    # folder (trainyard_shared.gitpolicy); a test of the rule itself passes its own policy
    os.environ.setdefault(
        "TRAINYARD_GIT_LOCAL_ROOTS", os.pathsep.join([tempfile.gettempdir(), str(config.rootpath)])
    )


# Every test has its own prefix, so its own streams, and JetStream reserves each logs stream's
# max_bytes up front: raise the accounting limit so a long session does not run out of it (the
# reservation is bookkeeping, not disk actually written).
TEST_MAX_FILE_STORE = "100TB"


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    store: Path = tmp_path_factory.mktemp("nats-store")
    with NatsServer(store, log_file=store / "nats.log", max_file_store=TEST_MAX_FILE_STORE) as server:
        yield server


@pytest.fixture
def fresh_nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A server of this test's own, for tests that stop or kill it."""
    server = NatsServer(
        tmp_path / "nats-store", log_file=tmp_path / "nats.log", max_file_store=TEST_MAX_FILE_STORE
    ).start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
async def nats_client(nats_server: NatsServer) -> AsyncIterator[object]:
    import nats

    client = await nats.connect(nats_server.url)
    yield client
    await client.drain()


@pytest.fixture
def common(nats_server: NatsServer, prefix: str, tmp_path: Path) -> object:
    """The services' common settings for this test's server, prefix and data dir."""
    from trainyard_shared.testing.helpers import common_settings

    return common_settings(nats_server.url, prefix, tmp_path / "data")


@pytest.fixture
async def bus(nats_server: NatsServer, prefix: str) -> AsyncIterator[object]:
    """A plain nats-py client for the test's own reads and writes (``helpers.Bus``)."""
    from trainyard_shared.testing.helpers import Bus

    async with Bus(nats_server.url, prefix) as b:
        yield b


@pytest.fixture
async def indexed_jobs(nats_server: NatsServer, prefix: str) -> AsyncIterator[tuple[object, object]]:
    """The declared streams and buckets of this test's prefix: (``JobIndex``, a ``JobStore`` of the
    jobs bucket that keeps that index), as the submission service and the scheduler write."""
    from faststream.nats import NatsBroker

    from trainyard_contracts import Subjects
    from trainyard_shared.bus import ensure_streams, open_buckets
    from trainyard_shared.jobindex import JobIndex
    from trainyard_shared.jobstore import JobStore
    from trainyard_shared.natshandle import NatsHandle

    subjects = Subjects(prefix)
    broker = NatsBroker(nats_server.url)
    async with broker:
        await broker.start()
        await ensure_streams(broker, subjects)
        buckets = await open_buckets(broker, subjects)
        handle = NatsHandle(broker)
        index = JobIndex(handle.client, handle.jetstream, subjects)
        yield index, JobStore(buckets.jobs, index=index)
