"""An executor says what its backend keeps a job from: the heartbeat carries an isolation summary
(job user, containment, capabilities, no-new-privileges, gang network), ``GET /v1/executors`` and
``trainyard executors`` show it, and a heartbeat without one (an older executor) still reads.

The submission service and a local executor run in this process on a real nats-server; the
container and Kubernetes summaries come from the backends as configured (no engine or API server
is asked: the summary is what the executor will apply, docs/executors.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from trainyard_contracts import Capacity, ExecutorHeartbeat
from trainyard_executor.app import create_app as executor_app
from trainyard_executor.backends.base import Resources
from trainyard_executor.backends.docker import DockerBackend
from trainyard_executor.backends.kube_manifests import KubeOptions
from trainyard_executor.backends.kubernetes import KubernetesBackend
from trainyard_executor.settings import ExecutorSettings
from trainyard_shared.testing.helpers import Bus, common_settings, eventually, running
from trainyard_submission.app import create_app as submission_app
from trainyard_submission.settings import SubmissionSettings

pytestmark = [pytest.mark.security, pytest.mark.service, pytest.mark.local]

ADMIN = {"Authorization": "Bearer admin"}


async def test_the_executors_listing_shows_each_executors_isolation(nats_server, prefix, tmp_path: Path):
    common = common_settings(nats_server.url, prefix, tmp_path / "data")
    api = submission_app(common, SubmissionSettings(token="admin"))
    executor = executor_app(
        common, ExecutorSettings(id="exec-iso", cpu=2, memory=2048, heartbeat_seconds=0.5)
    )
    async with Bus(nats_server.url, prefix) as bus, api.router.lifespan_context(api):
        # an older executor: its heartbeat has no isolation field
        older = ExecutorHeartbeat(executor_id="exec-old", backend="local", capacity=Capacity(cpu=1, memory=1))
        raw = json.loads(older.model_dump_json())
        del raw["isolation"]
        executors_kv = await bus.js.key_value(bus.subjects.buckets.executors)
        await executors_kv.put("exec-old", json.dumps(raw).encode())
        async with running(executor):
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api")
            async with client:

                async def both() -> dict | None:
                    answer = await client.get("/v1/executors", headers=ADMIN)
                    rows = {r["executor_id"]: r for r in answer.json()["executors"]}
                    return rows if {"exec-iso", "exec-old"} <= set(rows) else None

                rows = await eventually(both, 30, "both executors listed")
    mine, old = rows["exec-iso"], rows["exec-old"]
    isolation = mine["isolation"]
    assert mine["backend"] == "local" and mine["alive"] is True and isinstance(mine["running"], int)
    assert isolation["containment"] in ("cgroup v2 per attempt", "process group per rank")
    # the tests run as root, in a data dir under 0700 folders: jobs share root here, and it says so
    assert isolation["root"] is True and isolation["job_user"].startswith("root")
    assert any("executor's user" in note for note in isolation["notes"])
    assert old["isolation"] is None


def test_container_and_kubernetes_executors_report_what_they_apply(tmp_path: Path):
    docker = DockerBackend(base_url=None, name="podman", executor_id="e", user=(10001, 10001), pids_limit=512)
    container = docker.isolation()
    assert container.capabilities == "all dropped" and container.no_new_privileges is True
    assert container.root is False and "10001:10001" in container.job_user
    assert "bridge network per gang" in container.gang_network and "512" in container.containment
    kube = KubernetesBackend(
        lambda: None,  # never called: the summary is the configuration
        KubeOptions(namespace="jobs", executor_id="k", run_as_user=1000),
        Resources(cpu=1.0, memory_mb=1, gpu=0),
    ).isolation()
    assert kube.job_user == "pod uid 1000" and kube.root is False and kube.containment == "pod"
    assert "network policy per gang" in kube.gang_network


def test_trainyard_executors_prints_the_isolation_columns(capsys):
    from trainyard_client.cli.output import Output
    from trainyard_client.cli.render import print_executors

    row = {
        "executor_id": "exec-a",
        "backend": "docker",
        "pool": "default",
        "alive": True,
        "draining": False,
        "running": 2,
        "isolation": {"job_user": "container uid:gid 10001:10001", "containment": "docker container"},
    }
    print_executors([row, {**row, "executor_id": "exec-old", "isolation": None}], Output.TABLE)
    out = capsys.readouterr().out
    assert "JOB USER" in out and "container uid:gid 10001:10001" in out
    assert "exec-old" in out and "?" in out  # an older executor: unknown, not blank
