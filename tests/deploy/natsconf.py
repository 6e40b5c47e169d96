"""A real nats-server started with deploy/nats/nats.conf (the compose config) and its users.

The passwords here are for tests only; deployments set their own (docs/deploy.md, "NATS users").
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

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


def password_for(user: str) -> str:
    return f"test-only-{user}-password"


@contextlib.contextmanager
def secured_server(store: Path) -> Iterator[NatsServer]:
    auth = natsauth()
    names = list(auth.users(auth.Subjects()))
    passwords = {auth.password_variable(user): password_for(user) for user in names}
    # nats-server reads the passwords from its environment (auth.conf names the variables)
    saved = {name: os.environ.get(name) for name in passwords}
    os.environ.update(passwords)
    server = NatsServer(store, config_file=NATS_DIR / "nats.conf", log_file=store.parent / "nats.log")
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
