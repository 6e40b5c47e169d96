"""A real nats-server started with deploy/nats/nats.conf (the compose config) and its users.

The users are deploy/nats/natsauth.py's, rendered with the test's executor ids (one user per
executor id). The passwords here are for tests only; deployments set their own (docs/deploy.md,
"NATS users").
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from trainyard_shared.natsserver import NatsServer

ROOT = Path(__file__).resolve().parents[2]
NATS_DIR = ROOT / "deploy" / "nats"


def natsauth() -> ModuleType:
    """deploy/nats/natsauth.py, the generator of the users (a script, not an installed package)."""
    if "natsauth" in sys.modules:
        return sys.modules["natsauth"]
    spec = importlib.util.spec_from_file_location("natsauth", NATS_DIR / "natsauth.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["natsauth"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# the executors of these tests; each is its own NATS user, executor-<id>
EXECUTOR_IDS = ("exec-a", "exec-b", "exec-auth")


def password_for(user: str) -> str:
    return f"test-only-{user}-password"


def inbox_of(user: str) -> str:
    """The inbox prefix a user's permissions let it read (admin: any)."""
    from trainyard_shared.natsusers import inbox_prefix

    return "_INBOX" if user == "admin" else inbox_prefix(user)


def deployed_config(directory: Path) -> Path:
    """deploy/nats/nats.conf beside an auth.conf with this module's executor users."""
    auth = natsauth()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "nats.conf").write_text((NATS_DIR / "nats.conf").read_text())
    (directory / "auth.conf").write_text(auth.render(auth.Subjects(), EXECUTOR_IDS))
    return directory / "nats.conf"


@contextlib.contextmanager
def secured_server(store: Path) -> Iterator[NatsServer]:
    auth = natsauth()
    names = list(auth.users(auth.Subjects(), EXECUTOR_IDS))
    passwords = {auth.password_variable(user): password_for(user) for user in names}
    # nats-server reads the passwords from its environment (auth.conf names the variables)
    saved = {name: os.environ.get(name) for name in passwords}
    os.environ.update(passwords)
    config = deployed_config(store.parent / "conf")
    server = NatsServer(store, config_file=config, log_file=store.parent / "nats.log")
    try:
        server.start()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    try:
        yield server
    finally:
        server.stop()


def violations(server: NatsServer) -> list[str]:
    """The permission violations nats-server logged (it logs every refused publish/subscribe)."""
    log = server.log_file
    if not log or not log.exists():
        return []
    return [line for line in log.read_text().splitlines() if "Violation" in line]


async def provisioned(server: NatsServer, prefix: str = "trainyard") -> None:
    """The provision step, as the operator (admin), on ``server``."""
    from trainyard_shared.provision import provision_with
    from trainyard_shared.settings import CommonSettings

    await provision_with(
        CommonSettings(
            nats_url=server.url, nats_user="admin", nats_password=password_for("admin"), prefix=prefix
        )
    )


def as_user(server_url: str, user: str, data: Path, *, key: str | None = None) -> Any:
    from trainyard_shared.settings import CommonSettings

    """``user``'s settings; ``key``: the admission key (the submission service and scheduler only)."""
    return CommonSettings(
        nats_url=server_url,
        nats_user=user,
        nats_password=password_for(user),
        prefix="trainyard",
        data_dir=data,
        log_format="text",
        admission_key=key,
    )


@contextlib.asynccontextmanager
async def job_path_as_users(server: NatsServer, data: Path, *, executor_id: str, token: str, key: str) -> Any:
    """The submission service (its API over ASGI: yields an authorised client), the scheduler and
    one executor in this process, each connected to ``server`` as its own user; the submission
    service and the scheduler hold the admission key ``key``."""
    import httpx

    from trainyard_executor.app import create_app as executor_app
    from trainyard_executor.settings import ExecutorSettings
    from trainyard_scheduler.app import create_app as scheduler_app
    from trainyard_scheduler.settings import SchedulerSettings
    from trainyard_shared.testing.helpers import running
    from trainyard_submission.app import create_app as submission_app
    from trainyard_submission.settings import SubmissionSettings

    api = submission_app(as_user(server.url, "submission", data, key=key), SubmissionSettings(token=token))
    scheduler = scheduler_app(
        as_user(server.url, "scheduler", data, key=key),
        SchedulerSettings(tick_seconds=0.2, submitted_grace_seconds=1),
    )
    executor = executor_app(
        as_user(server.url, f"executor-{executor_id}", data),
        ExecutorSettings(id=executor_id, cpu=1, memory=2048, gpu=0, heartbeat_seconds=0.5, grace_seconds=2),
    )
    async with api.router.lifespan_context(api), running(scheduler), running(executor):
        transport = httpx.ASGITransport(app=api)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers) as http:
            yield http
