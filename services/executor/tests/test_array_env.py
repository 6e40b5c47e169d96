"""A job of an array sees its index and the array's size, on every backend: the local process gets
``job_env`` as is; the docker/podman create request and the Kubernetes manifest carry it through
(the Kubernetes side is checked on the manifest we would send, no API server runs here)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from trainyard_contracts import JobSpec, lifecycle
from trainyard_executor.backends.docker import DockerBackend
from trainyard_executor.backends.kube_manifests import KubeOptions, job_manifest
from trainyard_executor.jobenv import HOST_ONLY_ENV, job_env
from trainyard_executor.testengines import make_launch

pytestmark = [pytest.mark.unit, pytest.mark.workflow]
NOW = datetime(2026, 12, 2, tzinfo=UTC)
ARRAY_VARS = ("TRAINYARD_ARRAY_INDEX", "TRAINYARD_ARRAY_COUNT")


def _env(**spec: object) -> dict[str, str]:
    record = lifecycle.new_record("jobarray01", JobSpec(name="fit", command=["true"], **spec), NOW, None)
    return job_env(record, 1, {}, (), None)


def test_an_array_job_gets_its_index_and_count_and_a_plain_job_neither():
    env = _env(array_task={"index": 7, "count": 100})
    assert (env["TRAINYARD_ARRAY_INDEX"], env["TRAINYARD_ARRAY_COUNT"]) == ("7", "100")
    plain = _env()
    assert not any(name in plain for name in ARRAY_VARS)


def test_a_spec_cannot_set_the_array_variables_itself():
    with pytest.raises(ValueError, match="TRAINYARD_"):
        JobSpec(name="fit", command=["true"], env={"TRAINYARD_ARRAY_INDEX": "3"})


def test_container_and_kubernetes_backends_pass_the_array_variables(tmp_path: Path):
    env = _env(array_task={"index": 2, "count": 3})
    launch = make_launch(tmp_path, ["python", "fit.py"], env=env, image="img:1")
    podman = DockerBackend(client_factory=lambda: None, name="podman", executor_id="exec-p")
    config = podman.container_config(launch, "img:1", launch.workdir / "outputs", None)
    assert {k: config["environment"][k] for k in ARRAY_VARS} == {
        "TRAINYARD_ARRAY_INDEX": "2",
        "TRAINYARD_ARRAY_COUNT": "3",
    }
    options = KubeOptions(namespace="trainyard", executor_id="kube-a", default_image="img:1")
    manifest = job_manifest(launch, options, HOST_ONLY_ENV, output_dir="/out", started_at=1.0)
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    pod_env = {e["name"]: e.get("value") for e in container["env"]}
    assert (pod_env["TRAINYARD_ARRAY_INDEX"], pod_env["TRAINYARD_ARRAY_COUNT"]) == ("2", "3")
