"""The embedded stack's default layout: the registry, telemetry and the workflow service in one
process (trainyard_shared.cohost), each still its own NATS user, its own port and /healthz.

Real parts: `EmbeddedStack` (nats-server with the deployed users, the services as processes),
nats-server's own monitor (`/connz?auth=true`) for who is connected as whom."""

from __future__ import annotations

import os

import httpx
import pytest

from trainyard_client.stack import SERVICES, EmbeddedStack
from trainyard_shared.cohost import COHOSTABLE, entries

pytestmark = [pytest.mark.stack, pytest.mark.local, pytest.mark.timeout(600)]


def _connected_users(stack: EmbeddedStack) -> list[str]:
    connz = httpx.get(f"{stack.nats_monitor_url}/connz", params={"auth": "true", "limit": 1024}).json()
    return [conn.get("authorized_user", "") for conn in connz.get("connections") or []]


def test_three_services_share_one_process_each_as_its_own_nats_user(tmp_path):
    with EmbeddedStack(tmp_path / "data", api_port=None, nats_port=None, ready_timeout=300) as stack:
        shared = stack.services["registry"]
        assert shared is stack.services["telemetry"] is stack.services["workflow"]
        assert shared.process is not None and shared.alive
        assert len(stack.processes) == 4 and set(stack.services) == set(SERVICES)
        assert all(stack.healthy().values()), stack.healthy()
        users = _connected_users(stack)
        for service in ("registry", "telemetry", "workflow"):
            assert service in users, users  # its own user, not one shared by the three
        with open(f"/proc/{shared.process.pid}/environ", "rb") as raw:
            names = {entry.split(b"=", 1)[0].decode() for entry in raw.read().split(b"\0") if entry}
        assert "TRAINYARD_NATS_PASSWORD" not in names and "TRAINYARD_ADMISSION_KEY" not in names
        assert {"TRAINYARD_REGISTRY_NATS_PASSWORD", "TRAINYARD_WORKFLOW_NATS_PASSWORD"} <= names
        with stack.client() as client:
            job = client.submit({"name": "cohosted", "command": ["true"]}).job_id
            assert client.wait(job, timeout=120).state.value == "succeeded"
    assert not shared.alive and not stack.leftovers


def test_process_per_service_runs_each_alone(tmp_path):
    stack = EmbeddedStack(tmp_path / "data", api_port=None, nats_port=None, ready_timeout=300, cohost=False)
    with stack:
        assert sorted(stack.processes) == sorted(SERVICES)
        pids = {proc.process.pid for proc in stack.processes.values() if proc.process is not None}
        assert len(pids) == len(SERVICES) and os.getpid() not in pids
        assert all(stack.healthy().values()), stack.healthy()


def test_only_services_that_hold_no_key_and_start_no_job_may_share_a_process():
    assert set(COHOSTABLE) == {"registry", "telemetry", "workflow"}
    assert [entry.name for entry in entries(["workflow", "registry"])] == ["workflow", "registry"]
    for wrong in (["executor"], ["scheduler", "registry"], ["registry", "registry"], []):
        with pytest.raises(SystemExit) as exited:
            entries(wrong)
        assert exited.value.code == 2
