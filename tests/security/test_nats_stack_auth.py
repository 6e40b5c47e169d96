"""``trainyard up``'s NATS needs credentials, and each service's are only its own.

One embedded stack (real nats-server and the five services as processes). Before, its nats-server
ran without authentication: any local user could connect and read every job record (secret env
included), submit into any queue, or publish a start command to the executor.
"""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest

from trainyard_client.bus import submit_over_nats
from trainyard_client.stack import EmbeddedStack

pytestmark = [pytest.mark.security, pytest.mark.stack, pytest.mark.nats_auth]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    data = tmp_path_factory.mktemp("stack-auth")
    # a generous start: the registry imports MLflow, slow on a loaded 2-core machine
    with EmbeddedStack(data, api_port=None, nats_port=None, ready_timeout=300) as running:
        yield running


async def _connect(url: str, **options: object) -> None:
    nc = await nats.connect(
        url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5, **options
    )
    await nc.close()


def test_a_connection_without_credentials_or_with_a_wrong_password_is_refused(stack):
    refused = (nats.errors.NoServersError, nats.errors.Error, OSError)
    with pytest.raises(refused):
        asyncio.run(_connect(stack.nats_url))
    with pytest.raises(refused):
        asyncio.run(_connect(stack.nats_url, user="admin", password="guess"))
    asyncio.run(_connect(stack.nats_url, **stack.nats_connect_options("client")))  # the right one works


def test_the_credentials_are_readable_by_their_owner_only(stack):
    auth = stack.nats_auth_dir
    assert stat.S_IMODE(auth.stat().st_mode) == 0o700
    files = sorted(auth.iterdir())
    names = {path.name for path in files}
    users = {
        "submission",
        "scheduler",
        f"executor-{stack.executor_id()}",
        "registry",
        "telemetry",
        "client",
        "admin",
    }
    assert {f"{user}.password" for user in users} | {"server.conf"} <= names
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert (auth / "admin.password").read_text().strip() in (auth / "server.conf").read_text()


def test_the_monitor_port_listens_on_loopback_only(stack):
    varz = httpx.get(f"{stack.nats_monitor_url}/varz", timeout=5).json()
    assert varz["http_host"] == "127.0.0.1"
    assert varz["auth_required"] is True


def test_a_service_user_cannot_change_a_stream(stack):
    """telemetry's own password (what a compromised telemetry holds) cannot lower the jobs bucket."""

    async def attack() -> tuple[list[str], int]:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc).lower())

        options = {
            "user": "telemetry",
            "password": (stack.nats_auth_dir / "telemetry.password").read_text().strip(),
        }
        nc = await nats.connect(stack.nats_url, error_cb=on_error, inbox_prefix="_INBOX.telemetry", **options)
        admin = await nats.connect(stack.nats_url, **stack.nats_connect_options("admin"))
        try:
            bucket = f"KV_{stack.prefix}_jobs"
            config = (await admin.jetstream().stream_info(bucket)).config
            with pytest.raises(Exception):  # noqa: B017 - refused: a timeout or the violation
                await nc.jetstream(timeout=2).update_stream(config=config.evolve(max_msgs=1))
            await nc.flush()
            return errors, (await admin.jetstream().stream_info(bucket)).config.max_msgs
        finally:
            await nc.close()
            await admin.close()

    errors, max_msgs = asyncio.run(attack())
    assert max_msgs == -1
    assert any("permissions violation" in e and "stream.update" in e for e in errors), errors


def test_another_system_submits_and_follows_a_job_with_the_client_credentials(stack):
    """The README's "Following and submitting jobs from another system", with credentials."""
    options = stack.nats_connect_options("client")
    spec = {"name": "from-another-system", "command": ["python", "-c", "print('hello')"]}
    reply = asyncio.run(submit_over_nats(stack.nats_url, json.dumps(spec), prefix=stack.prefix, **options))
    assert reply["accepted"], reply

    async def follow(job_id: str) -> list[str]:
        nc = await nats.connect(stack.nats_url, **options)
        seen: list[str] = []
        try:
            sub = await nc.jetstream().subscribe(f"{stack.prefix}.job.{job_id}.>", ordered_consumer=True)
            while "succeeded" not in seen:
                seen.append(json.loads((await sub.next_msg(timeout=60)).data)["type"])
        finally:
            await nc.close()
        return seen

    assert asyncio.run(follow(reply["job_id"]))[:1] == ["submitted"]


def test_the_provision_step_ran_as_the_operator(stack):
    log = Path(stack.log_dir) / "provision.log"
    assert "declared" in log.read_text()


def test_what_the_stack_keeps_at_rest_is_its_users_alone(stack):
    """Before, the data dir, the logs, NATS's store and the MLflow database were world-readable
    (a local user read every job record from NATS's files). The data dir is passable, not
    listable (the executor's per-attempt uids reach their work dirs through it); the rest is
    0700 / 0600 once a job has run and been registered."""
    client = stack.client()
    job = client.submit({"name": "at-rest", "command": ["python", "-c", "print('kept')"]})
    assert client.wait(job.job_id, timeout=120).state == "succeeded"
    assert stat.S_IMODE(stack.data_dir.stat().st_mode) & 0o066 == 0
    private = [stack.log_dir, stack.data_dir / "mlflow", stack.data_dir / "nats", stack.nats_auth_dir]
    for top in private:
        for path in [top, *top.rglob("*")]:
            mode = stat.S_IMODE(path.lstat().st_mode)
            assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
    token = stack.data_dir / "api-token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600


def test_only_the_submission_service_and_the_scheduler_hold_the_admission_key(stack):
    """The key that signs admitted jobs (docs/security.md, "Only admitted jobs are placed") is
    generated into the credentials folder (0600, checked above) and given to those two processes;
    the executor, which may still write job records, and every other service never see it, even
    when it is in the environment `trainyard up` was started from."""
    key = (stack.nats_auth_dir / "admission.key").read_text().strip()
    assert len(key) >= 32
    holders = set()
    for name, service in stack.services.items():
        environ = Path(f"/proc/{service.process.pid}/environ").read_bytes().split(b"\0")
        if f"TRAINYARD_ADMISSION_KEY={key}".encode() in environ:
            holders.add(name)
        else:
            assert not any(v.startswith(b"TRAINYARD_ADMISSION_KEY=") for v in environ), name
    assert holders == {"submission", "scheduler"}
    # a key in the shell `trainyard up` starts from reaches no process but the generated one's two
    shell = {**stack.service_env(), "TRAINYARD_ADMISSION_KEY": "from-the-shell-0123456789"}
    for name in stack.services:
        given = stack.process_env(name, shell).get("TRAINYARD_ADMISSION_KEY")
        assert given == (key if name in ("submission", "scheduler") else None), name
