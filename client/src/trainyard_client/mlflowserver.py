"""``trainyard up --mlflow-server``: a real ``mlflow server`` beside the embedded stack, so that
changes made in MLflow directly reach the bus through its webhooks (docs/models.md, "MLflow's own
events").

Off by default: the stack keeps MLflow in a SQLite file that the services open directly, and a
server costs seconds at start and a few hundred MB. On, the stack

- starts ``mlflow server`` on its host (loopback) and a free port, one worker, no job runner, on the
  same SQLite file (``mlflow/mlflow.db``: the versions made without a server stay) and artifacts
  beside it (``mlflow/artifacts``), its log in ``logs/mlflow.log``;
- points the services (and so the jobs, through the executor) at the server's URL;
- generates a webhook secret at every start (never written to a log or a file of ours: MLflow keeps
  it encrypted in its database, with a key generated once into ``mlflow/webhook-key``, 0600) and
  gives it to the registry only (``TRAINYARD_REGISTRY_WEBHOOK_SECRET``);
- creates the webhook ``trainyard`` to the registry's ``/mlflow/webhook`` with MLflow's own client,
  or updates it (its URL and secret) when the database has it from an earlier start;
- stops the server with the stack, by its process group (the server and its worker).
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from trainyard_client.stackprocess import StackError, private_log

WEBHOOK_NAME = "trainyard"
WEBHOOK_EVENTS = (
    "registered_model.created",
    "model_version.created",
    "model_version_alias.created",
    "model_version_alias.deleted",
)
KEY_FILE = "webhook-key"


class MlflowServer:
    """One ``mlflow server`` process on the stack's ``data_dir/mlflow/mlflow.db``."""

    def __init__(self, data_dir: Path, host: str, port: int, python: str) -> None:
        self.folder, self.log_path = data_dir / "mlflow", data_dir / "logs" / "mlflow.log"
        self.host, self.port, self.python = host, port, python
        self.process: subprocess.Popen[bytes] | None = None
        # new at every start: the registry is given it, MLflow's webhook is updated to it
        self.webhook_secret = secrets.token_urlsafe(32)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def encryption_key(self) -> str:
        """The key MLflow encrypts webhook secrets with: kept (0600, in the stack's private MLflow
        folder), else a restarted server could not read the webhook it stored."""
        path = self.folder / KEY_FILE
        if not path.exists():
            key = base64.urlsafe_b64encode(os.urandom(32)).decode()  # a Fernet key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(key)
        return path.read_text().strip()

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update(
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",  # the job runner: seconds and memory, unused
            MLFLOW_DISABLE_TELEMETRY="true",
            # the receiver is the registry on loopback over http: MLflow refuses both by default
            MLFLOW_WEBHOOK_ALLOWED_SCHEMES="http,https",
            MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS="true",
            MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY=self.encryption_key(),
        )
        return env

    def launch(self, umask: int) -> None:
        """Start the server (``connect`` waits for it)."""
        command = [
            self.python, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
            "--artifacts-destination", str(self.folder / "artifacts"),
            "--host", self.host, "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        with private_log(self.log_path) as log:
            self.process = subprocess.Popen(
                command,
                env=self.environment(),
                cwd=self.folder,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its group: the server and its worker stop together
                umask=umask,
            )

    def connect(self, timeout: float, registry: str) -> None:
        """Wait for the server's /health, then make its webhook to the registry at ``registry``
        (host:port)."""
        assert self.process is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.process.poll() is not None:
                raise StackError(
                    f"mlflow server exited (code {self.process.returncode}); see {self.log_path}"
                )
            if time.monotonic() >= deadline:
                raise StackError(f"mlflow server did not answer {self.url}/health in {timeout:.0f}s")
            time.sleep(0.2)
        self.connect_webhook(f"http://{registry}/mlflow/webhook")

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def connect_webhook(self, receiver_url: str) -> None:
        """Create (or update) the ``trainyard`` webhook to ``receiver_url`` with this start's secret."""
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        secret = self.webhook_secret
        events: list[Any] = list(WEBHOOK_EVENTS)
        client = MlflowClient(tracking_uri=self.url)
        try:
            with _few_retries():  # MLflow's client retries a 500 for minutes
                hooks = list(client.list_webhooks())
        except MlflowException as exc:
            raise StackError(
                f"mlflow server could not list its webhooks ({exc.message[:200]}): was its database's"
                f" webhook made with another {self.folder / KEY_FILE}? (log: {self.log_path})"
            ) from None
        found = [hook for hook in hooks if hook.name == WEBHOOK_NAME]
        if found:
            client.update_webhook(
                found[0].webhook_id,
                url=receiver_url,
                events=events,
                secret=secret,
                status="ACTIVE",
            )
        else:
            client.create_webhook(WEBHOOK_NAME, receiver_url, events, secret=secret)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the server's process group, SIGKILL after ``timeout``."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)


@contextlib.contextmanager
def _few_retries() -> Iterator[None]:
    """MLflow's HTTP client retries an answer of 5xx with a backoff that runs to minutes; a server
    that cannot read its webhooks answers so at once and every time."""
    names = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")
    before = {name: os.environ.get(name) for name in names}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1")
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
