"""What a newcomer hits first is refused at once, with the field and what would be accepted: a queue
nobody configured, a token for a team that has no queue, and a spec no registered executor could
ever hold (issue 16). Against the session's real nats-server; the executors' heartbeats are written
to the real executors bucket as an executor writes them (ExecutorDirectory.put)."""

from __future__ import annotations

from datetime import timedelta

import nats
import pytest

from trainyard_contracts import ExecutorHeartbeat
from trainyard_contracts._time import utcnow
from trainyard_contracts.records import Capacity
from trainyard_shared.executors import ExecutorDirectory
from trainyard_shared.testing.helpers import eventually

from .conftest import AUTH

pytestmark = pytest.mark.service


def spec(**fields: object) -> dict[str, object]:
    return {"name": "refused", "command": ["true"], **fields}


async def test_an_unknown_queue_is_a_422_naming_the_field_and_the_known_queues(api):
    assert (await api.put("/v1/queues/vision", json={"weight": 2}, headers=AUTH)).status_code == 201
    for route in ("/v1/jobs", "/v1/jobs/dry-run"):
        resp = await api.post(route, json=spec(queue="visoin"), headers=AUTH)
        assert resp.status_code == 422, resp.text
        [error] = resp.json()["errors"]
        assert error["field"] == "queue"
        assert "unknown queue 'visoin'" in error["message"]
        assert "known queues: default, vision" in error["message"]
    assert (await api.get("/v1/jobs", headers=AUTH)).json()["jobs"] == []
    # the configured queue and the built-in default take jobs
    assert (await api.post("/v1/jobs", json=spec(queue="vision"), headers=AUTH)).status_code == 201
    assert (await api.post("/v1/jobs", json=spec(), headers=AUTH)).status_code == 201


async def test_a_token_for_a_team_without_a_queue_is_refused(api):
    resp = await api.post("/v1/tokens", json={"team": "nosuchqueue"}, headers=AUTH)
    assert resp.status_code == 422, resp.text
    [error] = resp.json()["errors"]
    assert error["field"] == "team" and "unknown queue 'nosuchqueue'" in error["message"]
    assert (await api.get("/v1/tokens", headers=AUTH)).json()["tokens"] == []

    assert (await api.put("/v1/queues/nosuchqueue", json={}, headers=AUTH)).status_code == 201
    created = await api.post("/v1/tokens", json={"team": "nosuchqueue"}, headers=AUTH)
    assert created.status_code == 201, created.text


def heartbeat(executor_id: str, cpu: float, memory: int, gpu: int = 0) -> ExecutorHeartbeat:
    return ExecutorHeartbeat(
        executor_id=executor_id,
        backend="local",
        capacity=Capacity(cpu=cpu, memory=memory, gpu=gpu),
        lease_seconds=3600,
    )


async def test_a_spec_no_executor_could_hold_is_refused_with_the_largest_offer(api, nats_server, prefix):
    # no executor yet: the job is accepted and waits for one (fitcheck.py says why)
    waits = await api.post("/v1/jobs", json=spec(resources={"cpu": 64}), headers=AUTH)
    assert waits.status_code == 201, waits.text

    nc = await nats.connect(nats_server.url)
    try:
        subjects = api.app.state.trainyard["subjects"]
        directory = ExecutorDirectory(await nc.jetstream().key_value(subjects.buckets.executors))
        await directory.put(heartbeat("small", cpu=2, memory=4096))
        await directory.put(heartbeat("gpu-box", cpu=1, memory=8192, gpu=1))
        # one long gone: its lease expired, so its room is no offer
        gone = heartbeat("gone", cpu=128, memory=1 << 20).model_copy(
            update={"time": utcnow() - timedelta(hours=2)}
        )
        await directory.put(gone)
    finally:
        await nc.drain()
    service = api.app.state.trainyard["service"]

    async def both_seen():
        return len(await service.executors.online(utcnow())) == 2

    await eventually(both_seen, 10, "the submission service seeing both executors")

    # the dry run refuses it as the submit does (it used to say "would wait: too_large")
    for route in ("/v1/jobs/dry-run", "/v1/jobs"):
        too_big = await api.post(route, json=spec(resources={"cpu": 64, "memory": "16Gi"}), headers=AUTH)
        assert too_big.status_code == 422, too_big.text
        errors = {e["field"]: e["message"] for e in too_big.json()["errors"]}
        assert set(errors) == {"resources.cpu", "resources.memory"}
        assert "the largest has 2 (2 executor(s) online)" in errors["resources.cpu"]
        assert "the largest has 8192 MiB" in errors["resources.memory"]

    # each resource fits some executor, but no one executor holds them together
    apart = await api.post("/v1/jobs", json=spec(resources={"cpu": 2, "gpu": 1}), headers=AUTH)
    assert apart.status_code == 422, apart.text
    [error] = apart.json()["errors"]
    assert error["field"] == "resources" and "cpu 1, memory 8192 MiB, gpu 1" in error["message"]

    # a gang's replica is checked alone (a split gang spreads over executors)
    gang = await api.post("/v1/jobs", json=spec(replicas=2, resources={"cpu": 2}), headers=AUTH)
    assert gang.status_code == 201, gang.text
