"""``trainyard up --mlflow-server``: the embedded stack with a real ``mlflow server`` (SQLite in the
data dir) whose webhook, made by the stack with MLflow's client, tells the registry of a change
made in MLflow directly. The secret reaches the registry's process only and no log; the server
stops with the stack.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mlflow import MlflowClient

from trainyard_client.mlflowserver import MlflowServer
from trainyard_client.stack import PRIVATE_UMASK, EmbeddedStack
from trainyard_registry.webhooks import WebhookRefused, verify
from trainyard_shared.natsserver import free_port
from trainyard_shared.testing.helpers import version_in_mlflow

pytestmark = [pytest.mark.stack, pytest.mark.registry, pytest.mark.timeout(600)]


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def until(probe, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        time.sleep(0.2)
    return found


def test_an_alias_set_in_mlflow_reaches_the_registry_through_the_stacks_own_webhook(tmp_path: Path) -> None:
    name = f"up-{uuid.uuid4().hex[:8]}"
    stack = EmbeddedStack(tmp_path, api_port=None, nats_port=None, ready_timeout=240, mlflow_server=True)
    with stack:
        assert stack.mlflow is not None
        url = stack.mlflow.url
        assert stack.mlflow_tracking_uri == url and url.startswith("http://127.0.0.1:")
        secret = stack.mlflow.webhook_secret
        assert secret and len(secret) >= 32
        # the webhook was made by the stack: one, to the registry's receiver
        mlflow = MlflowClient(tracking_uri=url)
        (hook,) = [h for h in mlflow.list_webhooks() if h.name == "trainyard"]
        assert hook.url == f"http://127.0.0.1:{stack.ports['registry']}/mlflow/webhook"

        mlflow.create_registered_model(name)
        version = int(version_in_mlflow(mlflow, name))
        mlflow.set_registered_model_alias(name, "production", str(version))
        client = stack.client()

        def told():
            try:
                return client.model_alias(name, "production")
            except Exception:
                return None

        alias = until(told, 90, "the alias set in MLflow, in the registry's alias record")
        assert (alias.state.version, alias.state.by) == (version, "mlflow")
        # and the other way: a promotion through Trainyard lands in the server's MLflow
        client.promote_model(name, version, "staging")
        assert mlflow.get_model_version_by_alias(name, "staging").version == str(version)

        # the secret: in the registry's process environment only (the process it shares with
        # telemetry and the workflow service, README "Processes"), in no log
        pids = {name: s.process.pid for name, s in stack.services.items() if s.process is not None}
        assert environ(pids["registry"]).get("TRAINYARD_REGISTRY_WEBHOOK_SECRET") == secret
        for other in ("executor", "submission", "scheduler"):
            assert pids[other] != pids["registry"]
            assert secret not in "\0".join(environ(pids[other]).values()), other
        for log in stack.log_dir.glob("*.log"):
            assert secret.encode() not in log.read_bytes(), log
        assert stack.mlflow.process is not None
        server_pid = stack.mlflow.process.pid
    # stopped with the stack: the server's whole process group is gone
    with pytest.raises(ProcessLookupError):
        os.killpg(server_pid, 0)
    assert (tmp_path / "mlflow" / "mlflow.db").exists()
    assert oct((tmp_path / "mlflow" / "webhook-key").stat().st_mode & 0o777) == "0o600"


class Receiver:
    """A real HTTP listener that keeps what is posted to it (headers, body)."""

    def __init__(self) -> None:
        self.posted: list[tuple[dict[str, str], bytes]] = []
        received = self.posted

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append((dict(self.headers.items()), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_restarted_server_points_its_webhook_at_the_new_receiver_with_the_new_secret(
    tmp_path: Path,
) -> None:
    """The same data dir started twice (what a second ``trainyard up`` does): MLflow reads the
    webhook it stored (its secret encrypted with the kept key), and the stack updates it to the
    registry's new address and the new start's secret: one webhook, deliveries signed anew."""
    (tmp_path / "mlflow").mkdir(mode=0o700)
    (tmp_path / "logs").mkdir(mode=0o700)
    first, second = Receiver(), Receiver()
    secrets, names = [], []
    try:
        for receiver in (first, second):
            server = MlflowServer(tmp_path, "127.0.0.1", free_port(), sys.executable)
            secrets.append(server.webhook_secret)
            server.launch(PRIVATE_UMASK)
            try:
                server.connect(240, receiver.address)
                client = MlflowClient(tracking_uri=server.url)
                (hook,) = [h for h in client.list_webhooks() if h.name == "trainyard"]
                assert hook.url == f"http://{receiver.address}/mlflow/webhook"
                names.append(f"restart-{uuid.uuid4().hex[:8]}")
                client.create_registered_model(names[-1])
                until(lambda r=receiver: r.posted, 60, "a delivery")
            finally:
                server.stop()
    finally:
        first.server.shutdown()
        second.server.shutdown()
    assert secrets[0] != secrets[1]
    for receiver, secret, other, name in (
        (first, *secrets, names[0]),
        (second, *reversed(secrets), names[1]),
    ):
        for headers, body in receiver.posted:
            lower = {key.lower(): value for key, value in headers.items()}
            assert verify(secret, lower, body, time.time(), 300)
            with pytest.raises(WebhookRefused):
                verify(other, lower, body, time.time(), 300)
            assert name.encode() in body  # each start's change went to that start's receiver only
