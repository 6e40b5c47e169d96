"""The whole installation from the built images on one Docker network, for the end-to-end tests.

NATS (JetStream), an MLflow server and the six services run as containers started with
testcontainers; the test process reaches the API, MLflow and NATS through ports published on
127.0.0.1 only. The executor uses its image's default backend (local: jobs run as processes in its
container); it and the registry share one named volume at the executor's work root, so the
registry reads a job's ``outputs_uri`` (a file:// path) exactly where the executor wrote it.
NATS runs with the deployed config (deploy/nats/nats.conf: JetStream, one user per service) and
random passwords; every service connects as its own user. Git sources come from a bare clone of
this repository mounted read-only into submission (which resolves refs) and the executor (which
checks commits out).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker
import httpx
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network

from trainyard_contracts import Subjects
from trainyard_shared.natsusers import inbox_prefix, password_variable, users
from trainyard_shared.provision import provision_with
from trainyard_shared.settings import CommonSettings

ROOT = Path(__file__).resolve().parents[2]
VERSION = "0.1.0"
SERVICES = ("submission", "scheduler", "executor", "registry", "telemetry", "workflow")
SERVICE_PORTS = {
    "submission": 8700,
    "scheduler": 8701,
    "executor": 8702,
    "registry": 8703,
    "telemetry": 8704,
    "workflow": 8705,
}
NATS_IMAGE = "trainyard/nats:2.15"
MLFLOW_IMAGE = "trainyard/mlflow:3"
IMAGES = (NATS_IMAGE, MLFLOW_IMAGE, *(f"trainyard/{svc}:{VERSION}" for svc in SERVICES))
REPO_MOUNT = "/repos/trainyard.git"
WORK_ROOT = "/var/lib/trainyard/executor"  # the executor's work dirs: <data_dir>/executor/<id>/work
# the deployed config has one NATS user per executor id: the compose executor's (executor-docker-compose)
EXECUTOR_ID = "docker-compose"
NATS_CONFIG = ROOT / "deploy" / "nats" / "nats.conf"  # includes auth.conf: one user per service
# every user the deployed config names (its password variables must all be set, or nats-server
# does not start): the services', this executor id's, client, fetcher and admin
NATS_USERS = tuple(users(Subjects(), [EXECUTOR_ID]))


def nats_user(service: str) -> str:
    return f"executor-{EXECUTOR_ID}" if service == "executor" else service


def wait_until(
    what: str, check: Callable[[], object], timeout: float, explain: Callable[[], str] = str
) -> object:
    """Poll ``check`` until it returns something truthy; fail with ``explain()`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except Exception as exc:  # not up yet: connection refused, 503 ...
            result, last = None, exc
        else:
            last = None
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s (last error: {last!r})\n{explain()}")
        time.sleep(0.25)


class LoopbackContainer(DockerContainer):
    """A container whose published ports listen on 127.0.0.1 only (random host ports)."""

    def with_loopback_port(self, port: int) -> LoopbackContainer:
        # docker-py takes (host_ip, host_port); testcontainers' with_bind_ports takes only a port
        self.ports[f"{port}/tcp"] = ("127.0.0.1", None)  # type: ignore[assignment]
        return self


@dataclass
class ImageStack:
    """Start with :meth:`start`, always :meth:`close` (containers, network, volume, clone)."""

    workdir: Path
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    prefix: str = "trainyard"
    containers: dict[str, LoopbackContainer] = field(default_factory=dict)
    network: Network | None = None
    volume: str | None = None
    api_url: str = ""
    mlflow_url: str = ""
    repo_head: str = ""  # the commit HEAD of the mounted clone resolves to
    nats_url: str = ""
    nats_inbox_prefix: str = "_INBOX"

    def __post_init__(self) -> None:
        self.client = docker.from_env()
        self.run_id = uuid.uuid4().hex[:8]
        # per-service NATS users when the deployed config exists (deploy/nats), else no auth
        self.nats_auth = NATS_CONFIG.exists()
        # nats-server parses a variable's value like config text: "3E5..." would be a number, so a
        # password starts with letters and holds no punctuation
        self.passwords = {user: f"pw{secrets.token_hex(16)}" for user in NATS_USERS}

    # lifecycle

    def start(self) -> ImageStack:
        repo = self.workdir / "trainyard.git"
        subprocess.run(
            ["git", "clone", "--quiet", "--bare", "--", str(ROOT), str(repo)], check=True, capture_output=True
        )
        self.repo_head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
        ).stdout.strip()
        self.network = Network(docker_network_kw={"labels": {"trainyard.e2e": self.run_id}}).create()
        self.volume = self.client.volumes.create(name=f"trainyard-e2e-work-{self.run_id}").name

        nats = self._container("nats", NATS_IMAGE)
        if self.nats_auth:
            # the deployed config: one user per service (deploy/nats/auth.conf), random passwords
            nats.with_volume_mapping(str(NATS_CONFIG.parent), "/etc/nats", "ro")
            nats.with_command(["-c", "/etc/nats/nats.conf", "-sd", "/data/jetstream"])
            nats.with_envs(**{password_variable(u): pw for u, pw in self.passwords.items()})
        else:
            nats.with_command(["-js", "-m", "8222", "-sd", "/data/jetstream"])
        nats.with_loopback_port(4222).with_loopback_port(8222).start()
        monitor = f"http://127.0.0.1:{self.port('nats', 8222)}"
        wait_until(
            "NATS JetStream healthy",
            lambda: httpx.get(f"{monitor}/healthz?js-enabled-only=true", timeout=2).is_success,
            30,
            lambda: self.logs("nats"),
        )
        self.nats_url = f"nats://127.0.0.1:{self.port('nats', 4222)}"
        if self.nats_auth:
            # the provision step as the operator (what compose's one-shot provision service runs);
            # the services only bind
            asyncio.run(
                provision_with(
                    CommonSettings(
                        nats_url=self.nats_url,
                        nats_user="admin",
                        nats_password=self.passwords["admin"],
                        prefix=self.prefix,
                    )
                )
            )
            # the tests read job events as another system would: the client user, on its inbox
            self.nats_url = f"nats://client:{self.passwords['client']}@127.0.0.1:{self.port('nats', 4222)}"
            self.nats_inbox_prefix = inbox_prefix("client")

        # MLflow takes longest (~10-30 s): start it first and the services meanwhile
        self._container("mlflow", MLFLOW_IMAGE).with_loopback_port(5000).start()

        common = {
            "TRAINYARD_NATS_URL": "nats://nats:4222",
            "TRAINYARD_PREFIX": self.prefix,
            "TRAINYARD_LOG_LEVEL": "INFO",
            # the bare clone mounted at /repos is this installation's one allowed local source
            "TRAINYARD_GIT_LOCAL_ROOTS": str(Path(REPO_MOUNT).parent),
        }
        submission = self._service("submission", common)
        submission.with_env("TRAINYARD_SUBMISSION_TOKEN", self.token)
        # as deployed: the two services that sign and check admitted jobs share a key, nobody else
        admission_key = secrets.token_urlsafe(32)
        submission.with_env("TRAINYARD_ADMISSION_KEY", admission_key)
        submission.with_volume_mapping(str(repo), REPO_MOUNT, "ro").with_loopback_port(8700)
        self._service("scheduler", common).with_env("TRAINYARD_ADMISSION_KEY", admission_key)
        executor = self._service("executor", common)
        executor.with_envs(
            TRAINYARD_EXECUTOR_ID=EXECUTOR_ID,
            # advertised capacity: fixed, so the tests do not depend on the machine's CPU count
            TRAINYARD_EXECUTOR_CPU="2",
            TRAINYARD_EXECUTOR_MEMORY="4096",
            TRAINYARD_EXECUTOR_MLFLOW_TRACKING_URI="http://mlflow:5000",
        )
        executor.with_volume_mapping(str(repo), REPO_MOUNT, "ro")
        executor.with_volume_mapping(self.volume, WORK_ROOT, "rw")
        registry = self._service("registry", common)
        registry.with_env("MLFLOW_TRACKING_URI", "http://mlflow:5000")
        registry.with_volume_mapping(self.volume, WORK_ROOT, "rw")
        self._service("telemetry", common).with_loopback_port(8704)
        self._service("workflow", common)
        for svc in SERVICES:
            self.containers[svc].start()

        self.api_url = f"http://127.0.0.1:{self.port('submission', 8700)}"
        self.mlflow_url = f"http://127.0.0.1:{self.port('mlflow', 5000)}"
        for name in (*SERVICES, "mlflow"):
            self.wait_healthy(name, timeout=180)
        return self

    def close(self) -> None:
        for name, container in reversed(list(self.containers.items())):
            try:
                container.stop(force=True, delete_volume=True)
            except Exception as exc:  # keep cleaning up the rest
                print(f"e2e cleanup: could not remove container {name}: {exc}")
        self.containers.clear()
        if self.network is not None:
            try:
                self.network.remove()
            except Exception as exc:
                print(f"e2e cleanup: could not remove network {self.network.name}: {exc}")
            self.network = None
        if self.volume is not None:
            try:
                self.client.volumes.get(self.volume).remove(force=True)
            except Exception as exc:
                print(f"e2e cleanup: could not remove volume {self.volume}: {exc}")
            self.volume = None
        self.client.close()

    # containers

    def _container(self, name: str, image: str) -> LoopbackContainer:
        assert self.network is not None
        container = LoopbackContainer(image)
        container.with_name(f"trainyard-e2e-{self.run_id}-{name}")
        container.with_network(self.network).with_network_aliases(name)
        container.with_kwargs(labels={"trainyard.e2e": self.run_id})
        self.containers[name] = container
        return container

    def _service(self, svc: str, env: dict[str, str]) -> LoopbackContainer:
        container = self._container(svc, f"trainyard/{svc}:{VERSION}").with_envs(**env)
        if self.nats_auth:
            user = nats_user(svc)
            container.with_envs(TRAINYARD_NATS_USER=user, TRAINYARD_NATS_PASSWORD=self.passwords[user])
        return container

    def nats_permission_violations(self) -> list[str]:
        """The NATS server's log lines about refused publishes or subscriptions."""
        log = self.docker_container("nats").logs().decode(errors="replace")
        return [line for line in log.splitlines() if "Permissions Violation" in line]

    def port(self, name: str, port: int) -> int:
        return self.containers[name].get_exposed_port(port)

    def docker_container(self, name: str):  # docker.models.containers.Container
        return self.client.containers.get(self.containers[name].get_container_id())

    def health(self, name: str) -> str:
        state = self.docker_container(name).attrs["State"]
        if not state.get("Running"):
            code = state.get("ExitCode")
            raise AssertionError(f"{name} is not running (exit code {code}):\n{self.logs(name)}")
        return state.get("Health", {}).get("Status", "none")

    def wait_healthy(self, name: str, timeout: float) -> None:
        """The image's own HEALTHCHECK says healthy (a dead container fails at once)."""
        deadline = time.monotonic() + timeout
        while (status := self.health(name)) != "healthy":
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{name} not healthy within {timeout:g}s ({status}):\n{self.logs(name)}")
            time.sleep(0.5)

    def restart(self, name: str, stopped: Callable[[], None] = lambda: None) -> None:
        """Stop ``name`` gracefully (SIGTERM through tini), run ``stopped()``, start it again."""
        container = self.docker_container(name)
        container.stop(timeout=30)
        stopped()
        container.start()
        self.wait_healthy(name, timeout=120)

    def logs(self, name: str, tail: int = 60) -> str:
        try:
            out = self.docker_container(name).logs(tail=tail).decode(errors="replace")
        except Exception as exc:
            return f"(no logs of {name}: {exc})"
        return f"--- last {tail} log lines of {name} ---\n{out}"

    def save_logs(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for name in self.containers:
            try:
                data = self.docker_container(name).logs()
            except Exception as exc:
                data = f"(no logs: {exc})".encode()
            (folder / f"{name}.log").write_bytes(data)
        return folder

    # MLflow's REST API, from the test

    def mlflow_get(self, path: str, **params: str) -> dict:
        response = httpx.get(f"{self.mlflow_url}/api/2.0/mlflow/{path}", params=params, timeout=10)
        response.raise_for_status()
        return json.loads(response.text)
