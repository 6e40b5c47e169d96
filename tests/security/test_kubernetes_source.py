"""Kubernetes backend: a job's git credential never rides in a container's arguments, its secret env
values are never in the Job object, and the pod's clone obeys the installation's git rule.

No API server can run here (/work/shared/ENVIRONMENT.md). What is shown, on our side of the wire:
the Job and Secret manifests validated offline against the Kubernetes OpenAPI schemas
(``kubernetes_validate``); the init container's exact argv and environment run by the real ``git``
of this machine against a real HTTP server that asks for credentials (the credential arrives, from
the git config that the Secret carries, though the argv holds none); and the backend's calls
against ``kmock`` (an in-memory emulation of the API: the Secret is created before the Job, owned
by it, and deleted with the attempt). What a cluster's kubelet does with ``secretKeyRef`` is
Kubernetes' part and not run here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kmock
import kubernetes_validate
import pytest
from kubernetes import client as k8s

from trainyard_executor.backends.base import AttemptLaunch, Resources
from trainyard_executor.backends.kube_attempt import KubeAttempt
from trainyard_executor.backends.kube_manifests import KubeOptions, companion_metadata, job_manifest
from trainyard_executor.backends.kube_secret import GIT_CONFIG_KEY as SECRET_KEY
from trainyard_executor.backends.kube_secret import attempt_secret, env_key
from trainyard_executor.backends.kube_source import (
    GitFetch,
    git_config_key,
    git_init_container,
    kube_git_fetch,
)
from trainyard_executor.backends.kubernetes import KubernetesBackend
from trainyard_executor.jobenv import HOST_ONLY_ENV
from trainyard_shared.gitpolicy import GitPolicy, RepoRefused

pytestmark = [pytest.mark.security, pytest.mark.kubernetes]

TOKEN = "ghp-7d1f0c2b-never-in-args"
API_KEY = "sk-4f3e2d1c-never-in-the-job"
PUBLIC_REPO = f"https://{TOKEN}@93.184.216.34/team/repo.git"  # a public address: no DNS needed
OPTS = KubeOptions(namespace="trainyard-jobs", executor_id="kube-sec", default_image="train:1")
K8S_VERSION = "1.37.0"


def source_secret(fetch: GitFetch, metadata: dict[str, Any], **secret_env: str) -> dict[str, Any] | None:
    return attempt_secret(metadata, git_config_key=git_config_key(fetch), secret_env=secret_env)


def launch(tmp_path: Path, repo: str | None) -> AttemptLaunch:
    return AttemptLaunch(
        job_id="0abc123def456src",
        attempt=1,
        argv=["python", "train.py"],
        env={"LR": "0.1", "API_KEY": API_KEY},
        secret_env=("API_KEY",),
        workdir=tmp_path / "w",
        timeout_s=60.0,
        grace_s=5.0,
        image="train:1",
        cpu=1.0,
        memory_mb=512,
        gpu=0,
        source_repo=repo,
        source_commit="a" * 40,
    )


def test_the_credential_is_in_a_secret_only_and_the_clone_carries_the_git_rule(tmp_path: Path):
    fetch = kube_git_fetch(PUBLIC_REPO, GitPolicy())
    job = job_manifest(
        launch(tmp_path, PUBLIC_REPO), OPTS, HOST_ONLY_ENV, output_dir="/o", started_at=1.0, git=fetch
    )
    secret = source_secret(fetch, companion_metadata(job, OPTS, "uid-1"), API_KEY=API_KEY)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert secret is not None
    kubernetes_validate.validate(secret, K8S_VERSION, strict=True)

    assert TOKEN not in json.dumps(job)  # not in args, env values, annotations: nowhere in the Job
    assert API_KEY not in json.dumps(job)
    assert TOKEN in secret["stringData"][SECRET_KEY]
    (main,) = job["spec"]["template"]["spec"]["containers"]
    job_env = {e["name"]: e.get("value", e.get("valueFrom")) for e in main["env"]}
    assert job_env["LR"] == "0.1"  # only what the spec calls secret moves to the Secret
    assert job_env["API_KEY"] == {
        "secretKeyRef": {"name": secret["metadata"]["name"], "key": env_key("API_KEY")}
    }
    assert secret["stringData"][env_key("API_KEY")] == API_KEY
    clone = job["spec"]["template"]["spec"]["initContainers"][0]
    argv = clone["command"]
    for option in ("protocol.allow=never", "protocol.ext.allow=never", "protocol.file.allow=never"):
        assert argv[argv.index(option) - 1] == "-c"
    assert "http.followRedirects=false" in argv and argv[-3:] == ["--", fetch.url, "/trainyard/work/src"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in clone["env"]}
    assert env["GIT_CONFIG_KEY_0"] == {
        "secretKeyRef": {"name": secret["metadata"]["name"], "key": SECRET_KEY}
    }
    assert env["GIT_CONFIG_GLOBAL"] == "/dev/null" and env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


@pytest.mark.parametrize(
    "repo",
    ["file:///etc", "/srv/repos/x", "ext::sh -c id", "https://127.0.0.1/r.git", "https://169.254.169.254/r"],
)
def test_a_pod_never_clones_what_the_rule_refuses(repo: str):
    with pytest.raises(RepoRefused):
        kube_git_fetch(repo, GitPolicy(local_roots=(Path("/srv"),)))


class AsksForCredentials(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization")
        if auth is None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
        else:
            AsksForCredentials.seen.append(auth)
            self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def git_server() -> Iterator[int]:
    AsksForCredentials.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), AsksForCredentials)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_git_fetches_with_the_secrets_credential_while_its_argv_has_none(tmp_path: Path, git_server: int):
    """The init container's argv and env, run by this machine's git with the Secret's value in
    place of the secretKeyRef (what the kubelet would do)."""
    repo = f"http://user:{TOKEN}@127.0.0.1:{git_server}/team/repo.git"
    fetch = kube_git_fetch(repo, GitPolicy(schemes=frozenset({"http"}), allow_private=True))
    container = git_init_container(fetch, "git:1", {}, "job-1", str(tmp_path / "work"))
    secret = source_secret(fetch, {"name": "job-1"})
    assert secret is not None and TOKEN not in " ".join(container["command"])
    env = {"PATH": "/usr/bin:/bin"}
    for item in container["env"]:
        env[item["name"]] = item["value"] if "value" in item else secret["stringData"][SECRET_KEY]
    subprocess.run(container["command"], env=env, capture_output=True, timeout=60, check=False)
    expected = "Basic " + base64.b64encode(f"user:{TOKEN}".encode()).decode()
    assert expected in AsksForCredentials.seen


async def test_the_backend_makes_the_secret_first_owns_it_by_the_job_and_deletes_it(tmp_path: Path):
    """Client side only, against kmock (which gives objects no uid, so the Secret's owner reference
    to its Job is shown on the manifest, in the first test, not here)."""
    async with kmock.KubernetesEmulator() as mock, kmock.Server(mock):
        for resource in ("batch/v1/jobs", "v1/pods", "v1/services", "v1/secrets"):
            mock.resources[resource] = {}
        url = str(mock.url).rstrip("/")
        backend = KubernetesBackend(
            lambda: k8s.ApiClient(k8s.Configuration(host=url)),
            OPTS,
            Resources(cpu=8.0, memory_mb=8192, gpu=0),
            watch_idle_s=2.0,
        )

        async def sink(stream: str, line: str) -> None:
            pass

        attempt = await backend.start(launch(tmp_path, PUBLIC_REPO), sink)
        assert isinstance(attempt, KubeAttempt)

        def live(plural: str) -> dict[str, Any]:
            return {
                n: o.raw
                for (r, _ns, n), o in list(mock.objects.items())
                if r.plural == plural and not o.deleted
            }

        posts = [str(r.url) for r in list(mock) if r.method.value == "POST"]
        assert next(p for p in posts if "/secrets" in p or "/jobs" in p).endswith("/secrets")
        job = live("jobs")[attempt.name]
        secret = live("secrets")[f"{attempt.name}-secrets"]
        assert TOKEN not in json.dumps(job) and API_KEY not in json.dumps(job)
        assert TOKEN in secret["stringData"][SECRET_KEY]
        assert secret["stringData"][env_key("API_KEY")] == API_KEY
        await attempt.cancel(0)
        await asyncio.wait_for(attempt.wait(), 30)
        await attempt.release()
        assert live("secrets") == {}


def test_secret_env_without_a_source_still_goes_through_the_secret_and_no_secret_means_none(tmp_path: Path):
    job = job_manifest(launch(tmp_path, None), OPTS, HOST_ONLY_ENV, output_dir="/o", started_at=1.0)
    assert API_KEY not in json.dumps(job)
    secret = attempt_secret(
        companion_metadata(job, OPTS, "uid-1"), git_config_key=None, secret_env={"API_KEY": API_KEY}
    )
    assert secret is not None and secret["stringData"] == {env_key("API_KEY"): API_KEY}
    kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
    assert attempt_secret(companion_metadata(job, OPTS, "uid-1"), git_config_key=None, secret_env={}) is None
