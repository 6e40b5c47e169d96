"""A gang whose rank 0 ends before the executor reads its address (a job as short as ``true``).

The engine clears an ended container's address on its network, so reading rank 0's address just
after its start raced the job: a gang of ``true`` failed with "rank 0 has no address on network".
Real Docker and Podman (the ``engine`` fixture), the busybox test image.
"""

from __future__ import annotations

import uuid

import pytest

from trainyard_executor.backends.gang_network import create_network, master_address, remove_network
from trainyard_executor.core import free_loopback_port
from trainyard_executor.jobenv import plan_gang
from trainyard_executor.testengines import IMAGE, Lines, gone, make_launch
from trainyard_shared.testing.helpers import eventually

pytest_plugins = ["trainyard_executor.testengines"]  # the engine and backend fixtures


async def test_rank_0_that_ended_before_its_address_was_read_has_none(backend):
    """The race made certain: the container has ended when it is inspected."""
    name = f"trainyard-test-{uuid.uuid4().hex[:8]}"
    client = backend.client
    create_network(client, name, {"trainyard.test": "gang-short-rank"})
    container = client.containers.run(IMAGE, ["true"], network=name, detach=True)
    try:

        async def ended() -> bool:
            container.reload()
            return not container.attrs["State"]["Running"]

        await eventually(ended, 30, "rank 0 ended")
        # Docker clears the address of an ended container, Podman keeps it: either is no error
        kept = (container.attrs["NetworkSettings"]["Networks"].get(name) or {}).get("IPAddress")
        assert master_address(container, name) == (kept or None)
    finally:
        container.remove(force=True)
        remove_network(client, name)


async def test_a_gang_of_short_jobs_succeeds(backend, tmp_path):
    launch = make_launch(tmp_path, ["true"], gang=plan_gang(3, None, free_loopback_port))
    attempt = await backend.start(launch, Lines())
    outcome = await attempt.wait()
    assert (outcome.kind, outcome.exit_code, outcome.reason) == ("succeeded", 0, "exit code 0")
    await attempt.release()
    assert all(gone(backend, c) for c in attempt.container_ids)
    assert not backend.client.networks.list(names=[f"trainyard-{launch.job_id}-1"])


def test_a_running_rank_0_without_an_address_is_still_an_error():
    """A rank 0 that runs but has no address on the network is a real fault, not a short job."""

    class Inspected:
        attrs = {"State": {"Running": True}, "NetworkSettings": {"Networks": {}}}

    with pytest.raises(RuntimeError, match="rank 0 has no address on network n1"):
        master_address(Inspected(), "n1")
